"""Google's OIDC key endpoints on loopback, serving a `TokenIssuer`'s keys to token verifiers.

GET /oauth2/v1/certs                    {kid: x509 PEM}   (google-auth's default format, handler.oidc)
GET /oauth2/v3/certs                    JWK set            (google-auth with PyJWT, other JWT libraries)
GET /.well-known/openid-configuration   discovery document (its issuer is the issuer's, see oidc.py)
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from localcloud.emulator.oidc import CERTS_PATH, DISCOVERY_PATH, JWKS_PATH, TokenIssuer

__all__ = ["OidcHttpServer"]

KEYS_CACHE_CONTROL = "public, max-age=3600"


class OidcHttpServer:
    """Serves the issuer's keys over HTTP on 127.0.0.1, like Google's endpoints.

    The socket is bound on construction, so the URLs are known before `start()`; `stop()` closes it.
    """

    def __init__(self, issuer: TokenIssuer, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self.certs_url = self.url + CERTS_PATH
        self.jwks_url = self.url + JWKS_PATH
        # path -> (document, Cache-Control or None)
        self._routes: dict[str, tuple[Callable[[], dict[str, Any]], str | None]] = {
            CERTS_PATH: (issuer.pem_certs, KEYS_CACHE_CONTROL),
            JWKS_PATH: (issuer.jwks, KEYS_CACHE_CONTROL),
            DISCOVERY_PATH: (lambda: issuer.openid_configuration(self.url), None),
        }

    def start(self) -> OidcHttpServer:
        if self._thread is not None:
            raise RuntimeError("OidcHttpServer already started")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="oidc-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket: from now on connections are refused."""
        if self._thread is not None:
            self._httpd.shutdown()  # blocks until serve_forever returns: only when it runs
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> OidcHttpServer:
        return self if self._thread is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _handler_class(server: OidcHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = server._routes.get(urllib.parse.urlsplit(self.path).path)
            if route is None:
                self._send(404, {"error": "not found"})
            else:
                document, cache_control = route
                self._send(200, document(), {"Cache-Control": cache_control} if cache_control else {})

        def _not_allowed(self) -> None:
            self._send(405, {"error": "method not allowed"}, {"Allow": "GET"})

        # http.server dispatches a request to do_<METHOD>: every method but GET is refused.
        do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed  # noqa: N815

        def _send(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: no line on stderr per request

    return Handler
