"""A local S3 for benchmarks and tests: ``moto_server`` on a free loopback port, and a
forwarding HTTP proxy to put in front of it (``ForwardingProxy``: subclasses count requests,
add latency or inject faults through its two hooks)."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(log: Path | None = None) -> Iterator[str]:
    """A ``moto_server`` (S3) on a free loopback port while in the ``with``: its endpoint URL."""
    port = free_port()
    with open(log or "/dev/null", "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


class ForwardingProxy(ThreadingHTTPServer):
    """Forwards HTTP to ``upstream`` from a daemon thread while in a ``with``.

    ``intercept`` sees each request first and may answer it itself; ``forwarded`` sees each
    upstream answer. Both run on the request's thread: take ``lock`` to count.
    """

    daemon_threads = True
    # socketserver's default backlog of 5 drops the connections of a burst of concurrent GETs
    # beyond it, and their clients wait a second to try again
    request_queue_size = 128

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def intercept(self, request: BaseHTTPRequestHandler, method: str, path: str) -> bool:
        """Before forwarding: True when the request has been answered here (not forwarded)."""
        return False

    def forwarded(self, method: str, path: str, status: int, body: bytes) -> None:
        """After forwarding: the upstream's status and body."""

    def __enter__(self) -> ForwardingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardingProxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        if self.server.intercept(self, self.command, path):
            return
        target = self.server.upstream
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.server.forwarded(self.command, path, response.status, data)
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))  # a HEAD's is the object's
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward
