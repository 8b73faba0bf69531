"""The built-in job types. Importing this package registers them."""

from services.worker.handlers import echo

__all__ = ["echo"]
