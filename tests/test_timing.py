"""Forward-time statistics against hand-computed values."""

import math

import pytest

from segbench.timing import forward_time_stats


def test_forward_time_stats_hand_computed():
    stats = forward_time_stats([1, 2, 3, 4, 10])
    assert stats["images"] == 5
    assert stats["total_s"] == 20.0                 # 1+2+3+4+10
    assert stats["mean_s"] == 4.0                   # 20/5
    # Deviations from 4: -3, -2, -1, 0, 6 -> squares 9+4+1+0+36 = 50; population variance 50/5.
    assert stats["variance_s2"] == pytest.approx(10.0)
    assert stats["median_s"] == 3.0
    # Linear interpolation between ranks: p90 at position 0.9*(5-1) = 3.6 -> 4 + 0.6*(10-4) = 7.6
    assert stats["p90_s"] == pytest.approx(7.6)
    # p99 at position 0.99*4 = 3.96 -> 4 + 0.96*6 = 9.76
    assert stats["p99_s"] == pytest.approx(9.76)
    assert stats["min_s"] == 1.0
    assert stats["max_s"] == 10.0


def test_forward_time_stats_even_count_median_is_midpoint():
    stats = forward_time_stats([0.4, 0.1, 0.3, 0.2])
    assert stats["median_s"] == pytest.approx(0.25)   # (0.2 + 0.3) / 2
    assert stats["p90_s"] == pytest.approx(0.37)      # position 2.7: 0.3 + 0.7*(0.4-0.3)


def test_forward_time_stats_single_value_has_zero_variance():
    stats = forward_time_stats([7.66])
    assert stats["variance_s2"] == 0.0
    assert stats["mean_s"] == stats["median_s"] == stats["p90_s"] == stats["min_s"] == stats["max_s"] == 7.66


def test_forward_time_stats_empty_list():
    stats = forward_time_stats([])
    assert stats["images"] == 0
    assert stats["total_s"] == 0.0
    for key in ("mean_s", "variance_s2", "median_s", "p90_s", "p99_s", "min_s", "max_s"):
        assert math.isnan(stats[key]), key
