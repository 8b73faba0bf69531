"""``jobqueue api``: serve the HTTP API with uvicorn.

The server speaks HTTP/1.1 through h11 with a bounded request head
(``JOBQUEUE_MAX_HEADER_BYTES``; see services/api/protocol.py); the body is bounded by
the app (``JOBQUEUE_MAX_BODY_BYTES``).
"""

from __future__ import annotations

import argparse

import uvicorn

from services.api.app import create_app
from services.api.protocol import BoundedHeadProtocol
from services.runtime import start_service


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobqueue api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = start_service("api")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=10, http=BoundedHeadProtocol,
                h11_max_incomplete_event_size=settings.max_header_bytes)


if __name__ == "__main__":
    main()
