"""A fault-injecting HTTP proxy for the remote-storage tests: drops or 503s some requests."""

from __future__ import annotations

import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultyProxy(ThreadingHTTPServer):
    """Forwards HTTP requests to ``upstream``; fails a seeded ``rate`` of them.

    A failed request gets one of ``kinds``: ``503`` (S3's SlowDown, as under load), ``drop``
    (the connection closed without an answer: a reset) or ``403`` (AccessDenied: permanent).
    Reads of data chunks (not Deep Lake's version log, not bucket listings) fail at
    ``data_rate`` instead (default: ``rate``). Both may change while it runs.
    ``requests``/``faults`` count all requests and the failed ones, ``data_requests`` /
    ``data_faults`` those of data chunks.
    """

    daemon_threads = True

    def __init__(
        self,
        upstream: str,
        rate: float,
        kinds: tuple[str, ...] = ("503", "drop"),
        seed: int = 0,
        data_rate: float | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(upstream)
        self.rate, self.kinds, self.random = rate, kinds, random.Random(seed)
        self.data_rate = rate if data_rate is None else data_rate
        self.lock = threading.Lock()
        self.requests = self.faults = self.data_requests = self.data_faults = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

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

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultyProxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.decide(self.command, self.path.split("?")[0])
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if fault in ("503", "403"):
            code = {"503": b"SlowDown", "403": b"AccessDenied"}[fault]
            message = b"<Error><Code>" + code + b"</Code><Message>injected</Message></Error>"
            self.send_response(int(fault))
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
            return
        target = self.server.upstream
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward
