"""95% intervals by bootstrap over queries, for every accuracy, cost and saving we report.

One [B, n] matrix of resampled query indices (seeded) is drawn per split and reused for every
figure on that split, so intervals of differences (router - random, strategy - dense) are paired:
the same resampled queries on both sides. Percentile intervals; a figure is written
{"value": on the split itself, "lo": 2.5th percentile, "hi": 97.5th percentile}.
"""

from __future__ import annotations

import numpy as np

SAMPLES = 1000
LEVEL = 0.95


def resamples(n: int, seed: int, samples: int = SAMPLES) -> np.ndarray:
    """[samples, n] query indices drawn with replacement (seeded by `seed` and n)."""
    return np.random.default_rng([seed, n, 0xB007]).integers(0, n, size=(samples, n))


def band(stats: np.ndarray, level: float = LEVEL) -> dict:
    a = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(stats, dtype=np.float64), [a, 1 - a])
    return {"lo": float(lo), "hi": float(hi)}


def with_interval(values: np.ndarray, idx: np.ndarray) -> dict:
    """{value, lo, hi} of the mean of per-query `values`."""
    v = np.asarray(values, dtype=np.float64)
    return {"value": float(v.mean()), **band(v[idx].mean(1))}
