"""Webhooks: Standard Webhooks signing and verification, and delivery of job events to
callback URLs (through the outbound guard in shared.outbound).

Receivers verify a delivery with::

    from webhooks import verify
    event = verify(secret, body_bytes, request_headers)   # raises InvalidSignature
"""

from webhooks.signing import sign, signature_headers, verify

__all__ = ["sign", "signature_headers", "verify"]
