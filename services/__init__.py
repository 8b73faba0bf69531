"""The deployable processes: api, worker, scheduler, notifier (and `jobqueue dev`)."""
