"""JSON log lines that Cloud Logging parses: severity, message, trace, and any other fields as jsonPayload."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

TRACE_FIELD = "logging.googleapis.com/trace"
# What json.dumps(entry, default=str, separators=(",", ":")) would build on every call, built once (encode() keeps
# no state between calls, so threads share it).
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
# orjson, told to treat values as the stdlib encoder above does: dataclasses and datetimes go to default=str (orjson
# would write them its own way). It refuses keys that are not strings (its option to take them costs a third more on
# every line): those lines go to the stdlib's encoder.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_APPEND_NEWLINE


class JsonLog:
    def __init__(self, stream: TextIO | None = None, project: str | None = None) -> None:
        self._stream = stream
        self._project = project
        self._lock = threading.Lock()  # one whole line at a time, from the event loop or worker threads

    def emit(self, severity: str, message: str, *, trace: str | None = None, **fields: Any) -> None:
        self.write(severity, message, fields, trace)

    def write(self, severity: str, message: str, fields: Mapping[str, Any], trace: str | None = None) -> None:
        """emit(), the fields given as one mapping (the request log's, built once and not copied into keywords)."""
        entry: dict[str, Any] = {
            "severity": severity,
            "message": message,
            "time": now_text(),
            **fields,
        }
        if trace and self._project:
            trace_id = trace_of(trace)
            if trace_id:
                entry[TRACE_FIELD] = f"projects/{self._project}/traces/{trace_id}"
        line = encode_line(entry)
        stream = self._stream or sys.stdout
        # Written and flushed whole, at once: a line never waits in a buffer, so none is lost when the process
        # stops, whatever stops it.
        with self._lock:
            stream.write(line)
            stream.flush()


def now_text() -> str:
    """The time now as `datetime.now(UTC).isoformat()` writes it (RFC 3339), which orjson writes at half the cost."""
    return orjson.dumps(datetime.now(UTC))[1:-1].decode("ascii")


def encode_line(entry: Mapping[str, Any]) -> str:
    """One log line: ASCII JSON and a newline. orjson writes nearly every line, at a tenth of the stdlib's cost;
    the stdlib's encoder writes what orjson cannot say in ASCII: text beyond ASCII (orjson writes it as UTF-8,
    which a stdout of another encoding could not take), lone surrogates and integers past 64 bits (orjson
    refuses both), and keys that are not strings. Either way the line holds the same values; orjson writes a NaN
    or infinite float as null, where the stdlib would write a token that is not JSON and Cloud Logging could not
    parse the line."""
    try:
        encoded = orjson.dumps(entry, default=str, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    else:
        if encoded.isascii():
            return encoded.decode("ascii")
    return _ENCODER.encode(entry) + "\n"


def trace_of(header: str | None) -> str | None:
    """The trace id of an X-Cloud-Trace-Context header ("TRACE_ID/SPAN_ID;o=1")."""
    if not header:
        return None
    trace_id = header.split("/", 1)[0].strip()
    return trace_id if trace_id and all(c in "0123456789abcdefABCDEF" for c in trace_id) else None
