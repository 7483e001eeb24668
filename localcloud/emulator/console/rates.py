"""Each queue's dispatch rate, from samples of its `dispatched` counter (attempts started since it was created)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

__all__ = ["DispatchRates"]


class DispatchRates:
    """Dispatches per second of each queue over about the last `window` seconds.

    The counter is sampled when the console asks (it polls every second while a page is open), at most one sample
    every `min_gap` seconds: an idle console costs nothing. A counter that went down belongs to a queue deleted
    and created again under the same name: its samples start over.
    """

    def __init__(self, window: float = 10.0, min_gap: float = 0.5) -> None:
        self._window = window
        self._min_gap = min_gap
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def observe(self, now: float, counts: Mapping[str, int]) -> dict[str, float | None]:
        """Record `counts` (queue name -> dispatched) at `now`; the rate of each queue, None until two samples
        are apart in time."""
        rates: dict[str, float | None] = {}
        with self._lock:
            for gone in self._samples.keys() - counts.keys():
                del self._samples[gone]
            for name, count in counts.items():
                samples = self._samples.setdefault(name, deque())
                if samples and count < samples[-1][1]:
                    samples.clear()
                if not samples or now - samples[-1][0] >= self._min_gap:
                    samples.append((now, count))
                # Keep the newest sample that is at least `window` old, and all after it.
                while len(samples) > 1 and now - samples[1][0] >= self._window:
                    samples.popleft()
                start, first = samples[0]
                rates[name] = (count - first) / (now - start) if now > start else None
        return rates
