"""Per-client request limits of the OCR server: a token bucket per API key (or per address when keys are off).

A bucket holds ``burst`` requests and refills at ``per_minute / 60`` a second; a request that finds it empty is
refused with 429 and ``Retry-After`` (the seconds until one token is back). Clients are named by a short SHA-256 of
their key, never the key, wherever they are counted.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time


def client_id(key: bytes | None, address: str | None) -> str:
    return f"key-{hashlib.sha256(key).hexdigest()[:8]}" if key else f"addr-{address or 'unknown'}"


class RateLimits:
    def __init__(self, per_minute: float, burst: int):
        self.per_minute, self.burst = per_minute, burst
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)
        self.lock = threading.Lock()

    def wait_s(self, client: str, per_minute: float | None = None) -> int:
        """Take one token for ``client`` (its own rate, else the default): 0 when allowed, else whole seconds until
        a token is back. A rate of 0 means no limit."""
        rate = self.per_minute if per_minute is None else per_minute
        if rate <= 0:
            return 0
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * rate / 60.0)
            if tokens >= 1.0:
                self.buckets[client] = (tokens - 1.0, now)
                return 0
            self.buckets[client] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) * 60.0 / rate))
