"""A loopback HTTP proxy in front of the live service that forwards each
request and, for the first `drop` requests matching a method, closes the
connection instead of relaying the answer: the service has done the work,
the client never hears of it (a load balancer's idle timeout, a reset)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class DroppingProxy:
    def __init__(self, upstream: str, method: str, drop: int) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._method, self._drop = method, drop
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=upstream, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                proxy.seen.append((self.command, self.path, {k.lower(): v for k, v in headers.items()}))
                resp = proxy._upstream.request(self.command, self.path, content=body, headers=headers)
                with proxy._lock:
                    dropping = self.command == proxy._method and proxy._drop > 0
                    if dropping:
                        proxy._drop -= 1
                if dropping:
                    self.close_connection = True
                    return
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("content-length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PATCH = do_DELETE = _forward

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()
