"""JSON log lines that Cloud Logging parses: severity, message, trace, and any other fields as jsonPayload."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

TRACE_FIELD = "logging.googleapis.com/trace"
# What json.dumps(entry, default=str, separators=(",", ":")) would build on every call, built once (encode() keeps
# no state between calls, so threads share it).
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


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
            "time": datetime.now(UTC).isoformat(),
            **fields,
        }
        if trace and self._project:
            trace_id = trace_of(trace)
            if trace_id:
                entry[TRACE_FIELD] = f"projects/{self._project}/traces/{trace_id}"
        line = _ENCODER.encode(entry)
        stream = self._stream or sys.stdout
        # Written and flushed whole, at once: a line never waits in a buffer, so none is lost when the process
        # stops, whatever stops it.
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


def trace_of(header: str | None) -> str | None:
    """The trace id of an X-Cloud-Trace-Context header ("TRACE_ID/SPAN_ID;o=1")."""
    if not header:
        return None
    trace_id = header.split("/", 1)[0].strip()
    return trace_id if trace_id and all(c in "0123456789abcdefABCDEF" for c in trace_id) else None
