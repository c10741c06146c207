"""A real HTTP server on 127.0.0.1 publishing a JWKS the test can change, counting fetches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JwksPublisher:
    """What the server serves. ``body``/``status`` may be changed at any time."""

    def __init__(self, body: bytes = b'{"keys": []}', status: int = 200) -> None:
        self.body = body
        self.status = status
        self.fetches = 0
        self.url = ""
        self._lock = threading.Lock()

    def publish(self, body: bytes, status: int = 200) -> None:
        with self._lock:
            self.body, self.status = body, status

    def _serve(self) -> tuple[int, bytes]:
        with self._lock:
            self.fetches += 1
            return self.status, self.body


@contextmanager
def jwks_server(publisher: JwksPublisher) -> Iterator[JwksPublisher]:
    """Serve ``publisher`` at ``publisher.url`` (``http://127.0.0.1:<port>/jwks.json``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            status, body = publisher._serve()
            self.send_response(status)
            self.send_header("Content-Type", "application/jwk-set+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    publisher.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    try:
        yield publisher
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
