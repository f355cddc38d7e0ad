"""Waits between tries: exponential, capped, with jitter so that many workers do not retry in step."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): base * 2^(attempt-1), up to ``cap``, plus up to 50% jitter."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay + (rng or random).uniform(0, delay / 2)
