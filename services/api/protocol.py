"""HTTP/1.1 for the API server: h11 with a bounded request head, refused in JSON.

uvicorn's default httptools protocol puts no limit on the request head: header values
of 8 MB and 4 x 100 MB were read whole into memory. h11 has a limit of its own
(``h11_max_incomplete_event_size``: the bytes of a request line plus headers it holds
while they are incomplete); past it h11 gives up with status hint 431, which uvicorn
answers with a plain-text 400. This protocol answers 431 with the API's JSON error
instead, and closes the connection, as uvicorn does for every malformed request.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADERS_TOO_LARGE = 431


class _Connection(h11.Connection):
    """An h11 connection that remembers the status its last protocol error suggested."""

    error_status_hint = 400

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status_hint = exc.error_status_hint
            raise


class BoundedHeadProtocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes: int = self.conn._max_incomplete_event_size
        # NOTE: replaced before any byte arrives; same role and limit as uvicorn's own.
        self.conn = _Connection(h11.SERVER, self.max_head_bytes)

    def send_400_response(self, msg: str) -> None:
        assert isinstance(self.conn, _Connection)
        if self.conn.error_status_hint != HEADERS_TOO_LARGE:
            super().send_400_response(msg)
            return
        limit = self.max_head_bytes
        body = json.dumps({"error": {
            "code": "headers_too_large",
            "message": f"the request line and headers exceed {limit} bytes",
            "details": {"maxBytes": limit}}}).encode()
        for event in (h11.Response(status_code=HEADERS_TOO_LARGE,
                                   reason=b"Request Header Fields Too Large",
                                   headers=[(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"connection", b"close")]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
