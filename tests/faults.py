"""A fault-injecting HTTP proxy for the remote-storage tests: drops or 503s some requests."""

from __future__ import annotations

import random
from http.server import BaseHTTPRequestHandler

from fashion_lake.tools.s3 import ForwardingProxy


class FaultyProxy(ForwardingProxy):
    """Forwards HTTP requests to ``upstream``; fails a seeded ``rate`` of them.

    A failed request gets one of ``kinds``: ``503`` (S3's SlowDown, as under load), ``drop``
    (the connection closed without an answer: a reset) or ``403`` (AccessDenied: permanent).
    Reads of data chunks (not Deep Lake's version log, not bucket listings) fail at
    ``data_rate`` instead (default: ``rate``). Both may change while it runs.
    ``requests``/``faults`` count all requests and the failed ones, ``data_requests`` /
    ``data_faults`` those of data chunks.
    """

    def __init__(
        self,
        upstream: str,
        rate: float,
        kinds: tuple[str, ...] = ("503", "drop"),
        seed: int = 0,
        data_rate: float | None = None,
    ) -> None:
        super().__init__(upstream)
        self.rate, self.kinds, self.random = rate, kinds, random.Random(seed)
        self.data_rate = rate if data_rate is None else data_rate
        self.requests = self.faults = self.data_requests = self.data_faults = 0

    def decide(self, method: str, path: str) -> str | None:
        is_data = method == "GET" and "_deeplake_log" not in path and path.strip("/").count("/") >= 2
        with self.lock:
            self.requests += 1
            self.data_requests += is_data
            if self.random.random() >= (self.data_rate if is_data else self.rate):
                return None
            self.faults += 1
            self.data_faults += is_data
            return self.random.choice(self.kinds)

    def intercept(self, request: BaseHTTPRequestHandler, method: str, path: str) -> bool:
        fault = self.decide(method, path)
        if fault == "drop":
            request.close_connection = True
            request.connection.close()
            return True
        if fault in ("503", "403"):
            code = {"503": b"SlowDown", "403": b"AccessDenied"}[fault]
            message = b"<Error><Code>" + code + b"</Code><Message>injected</Message></Error>"
            request.send_response(int(fault))
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(message)))
            request.end_headers()
            request.wfile.write(message)
            return True
        return False
