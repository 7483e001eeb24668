"""JSON log lines that Cloud Logging parses: severity, message, trace, and any other fields as jsonPayload."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

TRACE_FIELD = "logging.googleapis.com/trace"


class JsonLog:
    def __init__(self, stream: TextIO | None = None, project: str | None = None) -> None:
        self._stream = stream
        self._project = project
        self._lock = threading.Lock()  # one whole line at a time, from the event loop or worker threads

    def emit(self, severity: str, message: str, *, trace: str | None = None, **fields: Any) -> None:
        entry: dict[str, Any] = {
            "severity": severity,
            "message": message,
            "time": datetime.now(UTC).isoformat(),
            **fields,
        }
        trace_id = trace_of(trace)
        if trace_id and self._project:
            entry[TRACE_FIELD] = f"projects/{self._project}/traces/{trace_id}"
        line = json.dumps(entry, default=str, separators=(",", ":"))
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


def trace_of(header: str | None) -> str | None:
    """The trace id of an X-Cloud-Trace-Context header ("TRACE_ID/SPAN_ID;o=1")."""
    if not header:
        return None
    trace_id = header.split("/", 1)[0].strip()
    return trace_id if trace_id and all(c in "0123456789abcdefABCDEF" for c in trace_id) else None
