"""What the server holds a caller to: how big a request's head may be, and how long its head and body may take.

uvicorn's httptools protocol keeps no such bound: it buffers a head of any size (a 20 MB header whole, inside the
parser) and waits for a head forever, so one oversized or trickling caller holds memory or a connection for as
long as it likes. `BoundedHttpToolsProtocol` adds both bounds to the head; the app bounds the body
(`BODY_TIMEOUT_S` here, the 1 MiB size in handler.app). It tells the app, through the request's scope, when it
already holds the whole body (`BODY_BUFFERED`): reading it then waits for nothing, and the app arms no timer.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from contract.cloud_tasks import MAX_HEADERS_BYTES, MIN_DISPATCH_DEADLINE_S
from contract.outcomes import TaskOutcome
from handler.structured_log import JsonLog

# Cloud Tasks refuses a task whose own headers pass 80 KiB. It adds its own (X-CloudTasks-*, the OIDC token) and
# Cloud Run's front end more (X-Forwarded-*, traceparent): a few KiB. 48 KiB on top holds them with room.
MAX_HEAD_BYTES = MAX_HEADERS_BYTES + 48 * 1024
# Cloud Run's front end relays a head at once. One still arriving after 10 s is trickled (a slowloris caller
# holding connections open), not slow. Counted from the head's first byte (from the connection's opening, for
# the first request), whatever arrives meanwhile.
HEADER_TIMEOUT_S = 10.0
# The shortest dispatch deadline Cloud Tasks allows: by then Cloud Tasks has stopped waiting for any task, and
# 1 MiB takes a fraction of it on Google's network. The body is read before the task is claimed, so a trickled
# body never holds the claim meanwhile.
BODY_TIMEOUT_S = MIN_DISPATCH_DEADLINE_S
# The ASGI scope extension the protocol sets once the server holds a request's whole body (nearly always before the
# app starts: a task's head and body come in one read). Absent, the body may still be on its way.
BODY_BUFFERED = "cloudrun-tasks.body-buffered"

_log = JsonLog()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a request head held to MAX_HEAD_BYTES (over it: 431, the contract's
    JSON) and to `header_timeout_s` (past it: the connection is closed)."""

    header_timeout_s = HEADER_TIMEOUT_S
    _head_bytes: int | None = 0  # of the head being read; None from its end to the end of its body
    _head_clock: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # dropped, unparsed: the caller is reading the refusal
        if self._head_bytes is None:  # a body
            super().data_received(data)
            return
        self._start_head_clock()
        # The parser gets no more of a head than the bound: it must end within it, whatever the reads' sizes.
        room = MAX_HEAD_BYTES - self._head_bytes
        self._head_bytes += min(len(data), room)
        super().data_received(data[:room])
        if self._head_bytes is not None and self._head_bytes >= MAX_HEAD_BYTES:
            if not self.transport.is_closing():
                self._refuse_head()
        elif len(data) > room and not self.transport.is_closing():
            self.data_received(data[room:])  # the head ended: its body, or the next request

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle is not None:
            self.cycle.scope.setdefault("extensions", {})[BODY_BUFFERED] = {}
        self._head_bytes = 0  # what comes next is the next request's head

    def _start_head_clock(self) -> None:
        if self._head_clock is None:
            self._head_clock = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_clock is not None:
            self._head_clock.cancel()
            self._head_clock = None

    def _head_timed_out(self) -> None:
        self._head_clock = None
        if self.transport.is_closing():
            return
        if not self._refused:
            reason = f"the request head did not arrive within {self.header_timeout_s:g}s"
            _log.emit("WARNING", "connection closed", outcome=TaskOutcome.REJECTED, reason=reason)
        self.transport.close()

    def _refuse_head(self) -> None:
        """Answers 431, then reads and drops what the caller still sends until it hangs up or the head clock runs
        out. Closed at once, the connection would be reset, often before the caller has read the answer."""
        self._refused = True
        reason = f"request head is over {MAX_HEAD_BYTES} bytes"
        body = json.dumps({"status": TaskOutcome.REJECTED, "reason": reason}).encode()
        lines = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        lines += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        lines.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(lines) + body)
        self.transport.write_eof()
        _log.emit(
            "WARNING", "request rejected", outcome=TaskOutcome.REJECTED, reason=reason, httpRequest={"status": 431}
        )


def bounded_protocol(header_timeout_s: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`, with this header timeout."""
    return type(BoundedHttpToolsProtocol.__name__, (BoundedHttpToolsProtocol,), {"header_timeout_s": header_timeout_s})
