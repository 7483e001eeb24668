"""The emulator's HTTP port: Google's OIDC key endpoints, serving a `TokenIssuer`'s keys to token verifiers, and
Cloud Tasks' REST-only BufferTask.

GET /oauth2/v1/certs                    {kid: x509 PEM}   (google-auth's default format, handler.oidc)
GET /oauth2/v3/certs                    JWK set            (google-auth with PyJWT, other JWT libraries)
GET /.well-known/openid-configuration   discovery document (its issuer is the issuer's, see oidc.py)
POST /v2/{queue}/tasks:buffer           BufferTask, the emulator choosing the task id
POST /v2/{queue}/tasks/{task_id}:buffer BufferTask with that task id

BufferTask (the tasks.buffer REST reference; choose-task-creation-method): "Creates and buffers a new task without
the need to explicitly define a Task message. The queue must have HTTP target", that is queue-level routing, a
uri_override naming a host. The request body becomes the task's body. Two forms are read:
- the reference's JSON, `{"body": {"contentType": ..., "data": BASE64}}` (a google.api.HttpBody): its data is the
  body and its contentType the task's Content-Type;
- any other body, as it is, with the request's Content-Type, as Google's own samples send it (`curl -d ...
  .../tasks:buffer`, https://github.com/meteatamel/cloudtasks-samples/tree/main/queue-uri-override-http-tasks-buffer).
No other header of the request reaches the task (which others Cloud Tasks passes on: no public record; ours).
The task is created through `CloudTasksCore.buffer_task`, so by CreateTask's rules; the queue's http_target
routes it at dispatch. The answer is `{"task": Task}` (BASIC view), or Google's JSON error
`{"error": {"code", "message", "status"}}` with the HTTP status of the gRPC code (404 NOT_FOUND, 409
ALREADY_EXISTS, 400 INVALID_ARGUMENT and FAILED_PRECONDITION).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2  # type: ignore[import-untyped]  # generated, no stubs
from google.api_core import exceptions as api_exceptions
from google.cloud import tasks_v2
from google.protobuf import json_format  # type: ignore[import-untyped]  # no stubs installed

from contract import cloud_tasks as limits
from localcloud.emulator.errors import TASK_TOO_LARGE_MESSAGE, CloudTasksError, invalid_argument
from localcloud.emulator.oidc import CERTS_PATH, DISCOVERY_PATH, JWKS_PATH, TokenIssuer

if TYPE_CHECKING:
    from localcloud.emulator.core import CloudTasksCore

__all__ = ["MAX_BUFFER_REQUEST_BYTES", "OidcHttpServer", "read_buffer_body"]

KEYS_CACHE_CONTROL = "public, max-age=3600"
# The largest body a BufferTask request may need: a task of the maximum size, base64 in the JSON form, plus room
# for the JSON around it. A longer body cannot make a task Cloud Tasks accepts, so it is refused unread.
MAX_BUFFER_REQUEST_BYTES = 4 * -(-limits.MAX_TASK_BYTES // 3) + 64 * 1024
# A client that stops sending mid-request does not hold a server thread longer than this.
REQUEST_TIMEOUT_S = 30.0
_BUFFER_PATH = re.compile(r"/v2/(?P<queue>[^:]+?)/tasks(?:/(?P<task_id>[^/:]*))?:buffer")


def read_buffer_body(body: bytes, content_type: str | None) -> tuple[bytes, str | None]:
    """The task body and Content-Type a BufferTask request carries (see the module docstring for the two forms).
    A request in the JSON form whose HttpBody is malformed is INVALID_ARGUMENT."""
    envelope = _json_envelope(body, content_type)
    if envelope is None:
        return body, content_type or None
    http_body = httpbody_pb2.HttpBody()
    try:
        json_format.ParseDict(envelope, http_body)
    except json_format.ParseError as error:
        # The first sentence is how Google's JSON front end words it ("Invalid JSON payload received. Unknown name
        # ...: Cannot find field.", googleapis/google-cloud-ruby#26951); protobuf's detail follows (ours).
        raise invalid_argument(f"Invalid JSON payload received. body: {error}") from None
    return bytes(http_body.data), http_body.content_type or None


def _json_envelope(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    """The HttpBody of a `{"body": {...}}` JSON request, or None when the request is a body as it is."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON: a body as it is
        return None
    if not isinstance(document, dict) or set(document) != {"body"} or not isinstance(document["body"], dict):
        return None
    envelope: dict[str, Any] = document["body"]
    return envelope


def _error_document(error: CloudTasksError) -> tuple[int, dict[str, Any]]:
    """Google's JSON error for `error`, with the HTTP status api_core maps its gRPC code to."""
    exception = api_exceptions.from_grpc_status(error.code, error.message)  # type: ignore[no-untyped-call]
    status = exception.code or 500
    return int(status), {"error": {"code": int(status), "message": error.message, "status": error.code.name}}


class OidcHttpServer:
    """Serves the issuer's keys over HTTP on 127.0.0.1, like Google's endpoints, and, given `core`, BufferTask.

    The socket is bound on construction, so the URLs are known before `start()`; `stop()` closes it.
    """

    def __init__(
        self, issuer: TokenIssuer, *, host: str = "127.0.0.1", port: int = 0, core: CloudTasksCore | None = None
    ) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.core = core
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

    def buffer(self, path: str, body: bytes, content_type: str | None) -> dict[str, Any]:
        """BufferTask for a request to `path` (already matched), as the `{"task": Task}` answer."""
        assert self.core is not None
        match = _BUFFER_PATH.fullmatch(path)
        assert match is not None
        queue = urllib.parse.unquote(match["queue"])
        task_id = urllib.parse.unquote(match["task_id"] or "")
        if match["task_id"] == "":  # ".../tasks/:buffer": a task id given, and empty; ours
            raise invalid_argument(
                "BufferTask: the task id in .../tasks/{task_id}:buffer is empty; leave out /{task_id} to let"
                " Cloud Tasks choose one"
            )
        data, data_type = read_buffer_body(body, content_type)
        task = self.core.buffer_task(queue, task_id, data, data_type)
        return {"task": json_format.MessageToDict(tasks_v2.Task.pb(task))}


def _handler_class(server: OidcHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S

        def do_GET(self) -> None:
            route = server._routes.get(urllib.parse.urlsplit(self.path).path)
            if route is None:
                self._send(404, {"error": "not found"})
            else:
                document, cache_control = route
                self._send(200, document(), {"Cache-Control": cache_control} if cache_control else {})

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path in server._routes:
                self._not_allowed()
                return
            if server.core is None or _BUFFER_PATH.fullmatch(path) is None:
                self._error(CloudTasksError(grpc.StatusCode.NOT_FOUND, f"No BufferTask method at {path[:200]}"))
                return
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # the stdlib server reads no chunks
                self.close_connection = True
                self._error(
                    invalid_argument(
                        "BufferTask: send the body with a Content-Length (the emulator reads no chunked bodies)"
                    )
                )
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BUFFER_REQUEST_BYTES:
                # Refused unread: no task can hold it, as Cloud Tasks would answer once it had read it all.
                self.close_connection = True
                self._error(invalid_argument(TASK_TOO_LARGE_MESSAGE))
                return
            body = self.rfile.read(length)
            try:
                self._send(200, server.buffer(path, body, self.headers.get("Content-Type")))
            except CloudTasksError as error:
                self._error(error)

        def _not_allowed(self) -> None:
            self._send(405, {"error": "method not allowed"}, {"Allow": "GET"})

        # http.server dispatches a request to do_<METHOD>: the keys are GET only, BufferTask POST only.
        do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed  # noqa: N815

        def _error(self, error: CloudTasksError) -> None:
            status, document = _error_document(error)
            self._send(status, document)

        def _send(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: no line on stderr per request

    return Handler
