"""Medians and percentiles of samples (nearest-rank on the sorted samples)."""

from __future__ import annotations

import math
from typing import Iterable


def percentile(samples: Iterable[float], pct: float) -> float:
    values = sorted(samples)
    if not values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def median(samples: Iterable[float]) -> float:
    values = sorted(samples)
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summary(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/min/max/n of latency samples in milliseconds."""
    return {"p50_ms": round(percentile(samples, 50), 3), "p90_ms": round(percentile(samples, 90), 3),
            "p99_ms": round(percentile(samples, 99), 3), "min_ms": round(min(samples), 3) if samples else math.nan,
            "max_ms": round(max(samples), 3) if samples else math.nan, "n": len(samples)}


def ratio(value: float, base: float) -> float:
    return round(value / base, 3) if base else math.nan
