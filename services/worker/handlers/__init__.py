"""The built-in job types. Importing this package registers them."""
