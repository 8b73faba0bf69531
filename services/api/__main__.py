"""``jobqueue api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from services.api.app import create_app
from services.runtime import start_service


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobqueue api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = start_service("api")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
