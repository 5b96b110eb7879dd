"""Forward-pass timing statistics."""

import numpy as np


def forward_time_stats(seconds):
    """Summary statistics of per-image forward times, in seconds.

    The variance is the population variance (numpy's default, ddof=0); the
    percentiles use linear interpolation between the closest ranks.
    """
    t = np.asarray(seconds, dtype=np.float64)
    if t.size == 0:
        nan = float("nan")
        return {"images": 0, "total_s": 0.0, "mean_s": nan, "variance_s2": nan, "median_s": nan,
                "p10_s": nan, "p90_s": nan, "p99_s": nan, "min_s": nan, "max_s": nan}
    return {
        "images": int(t.size),
        "total_s": float(t.sum()),
        "mean_s": float(t.mean()),
        "variance_s2": float(t.var()),
        "median_s": float(np.median(t)),
        "p10_s": float(np.percentile(t, 10)),
        "p90_s": float(np.percentile(t, 90)),
        "p99_s": float(np.percentile(t, 99)),
        "min_s": float(t.min()),
        "max_s": float(t.max()),
    }


def reshape_stats(seconds):
    """Statistics of what re-shaping the net for a new input shape cost, over the images that needed it.

    Each value is the time of re-shaping plus the first (untimed) pass at the new shape, minus the
    timed pass that followed: the cost of a new shape beyond a forward pass (it can come out
    slightly negative when a shape costs nothing and the two passes differ by noise).
    """
    stats = forward_time_stats(seconds)
    return {"reshapes": stats["images"],
            **{f"reshape_{key}": stats[key] for key in ("total_s", "mean_s", "median_s", "p90_s", "max_s")}}
