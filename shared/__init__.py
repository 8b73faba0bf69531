"""Code that two or more jobqueue services use: settings, the job document and its
transitions, the Redis queue, events, backoff, errors and logging."""
