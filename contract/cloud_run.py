"""The Cloud Run facts that more than one package needs (Cloud Run's request-timeout and concurrency pages)."""

from __future__ import annotations

from typing import Final

DEFAULT_REQUEST_TIMEOUT_S: Final = 300.0  # template.timeout when unset
MAX_REQUEST_TIMEOUT_S: Final = 3600.0
MAX_INSTANCE_CONCURRENCY: Final = 1000  # requests one instance takes at once
