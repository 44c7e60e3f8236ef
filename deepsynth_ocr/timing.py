"""The one timing helper: seconds per named stage and counts of things done, accumulated until ``take()``
hands them over (as ``time/<stage>_s`` and ``<count>_per_s`` over the wall time since the last take)
and starts again. Training uses it per logging interval; it costs two ``perf_counter`` calls a stage.
"""

from __future__ import annotations

import contextlib
import time


class StageClock:
    def __init__(self):
        self._seconds: dict[str, float] = {}
        self._counts: dict[str, float] = {}
        self._since = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def seconds(self, name: str) -> float:
        """Seconds in ``name`` since the last take."""
        return self._seconds.get(name, 0.0)

    def count(self, name: str, n: float) -> None:
        self._counts[name] = self._counts.get(name, 0.0) + n

    def take(self) -> dict[str, float]:
        """``{"time/<stage>_s": seconds, "<count>_per_s": rate, "time/wall_s": seconds}`` since the last take."""
        now = time.perf_counter()
        wall = now - self._since
        out = {f"time/{name}_s": round(seconds, 4) for name, seconds in self._seconds.items()}
        if wall > 0:
            out.update({f"{name}_per_s": round(n / wall, 2) for name, n in self._counts.items()})
        out["time/wall_s"] = round(wall, 4)
        self._seconds, self._counts, self._since = {}, {}, now
        return out
