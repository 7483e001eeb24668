"""The Cloud Run facts that more than one package needs (Cloud Run's request-timeout and concurrency pages)."""

from __future__ import annotations

from typing import Final

DEFAULT_REQUEST_TIMEOUT_S: Final = 300.0  # template.timeout when unset
MAX_REQUEST_TIMEOUT_S: Final = 3600.0
MAX_INSTANCE_CONCURRENCY: Final = 1000  # requests one instance takes at once

# Probes (Probe in the run v2 API, as pulumi-gcp's ServiceTemplateContainer{Startup,Liveness}ProbeArgs quote it,
# and the "Configure container health checks" page): unset fields default to period 10 s, timeout 1 s,
# failure threshold 3, initial delay 0. A period must be at least the timeout. A startup probe's delay and
# period go to 240 s, and the whole start-up budget (delay + period x threshold) may not exceed 240 s; a
# liveness probe's delay and period go to 3600 s and it has no budget.
DEFAULT_PROBE_PERIOD_S: Final = 10
DEFAULT_PROBE_TIMEOUT_S: Final = 1
DEFAULT_PROBE_FAILURE_THRESHOLD: Final = 3
DEFAULT_PROBE_INITIAL_DELAY_S: Final = 0
MAX_STARTUP_PROBE_S: Final = 240  # initial delay, period, timeout and delay + period x threshold
MAX_LIVENESS_PROBE_S: Final = 3600  # initial delay, period and timeout

# IAM "Access change propagation" (cloud.google.com/iam/docs/access-change-propagation): a change to an allow
# policy "typically" applies in 2 minutes, "potentially 7 minutes or longer". Until the invoker's run.invoker
# grant has applied, Cloud Run answers the first tasks 401/403; a queue must keep retrying at least this long.
IAM_PROPAGATION_S: Final = 420.0
