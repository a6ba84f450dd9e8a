"""The queue between source and worker (fanwatch/live/blocks.py) and the loop statistics (stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fanwatch import live


def test_histogram_percentiles_are_close_and_bounded():
    h = live.Histogram()
    values = np.random.default_rng(0).lognormal(2.0, 0.5, 20000)
    for v in values:
        h.add(v)
    for q in (0.5, 0.95):
        assert h.quantile(q) == pytest.approx(np.quantile(values, q), rel=0.02)
    assert h.counts.nbytes < 50_000 and live.Histogram().quantile(0.5) is None


def test_a_dropped_block_flags_the_next_one_as_following_a_gap():
    stats = live.LoopStats()
    bq = live.BlockQueue(2, stats)
    blocks = [live.Block(np.zeros((160, 1), np.float32), 16000.0, 1, 0.0) for _ in range(5)]
    assert [bq.offer(b) for b in blocks[:3]] == [True, True, False]  # the third does not fit
    bq.get(0.1)
    assert bq.offer(blocks[3]) and bq.offer(blocks[4]) is False
    assert [b.gap for b in blocks] == [False, False, False, True, False]
    assert stats.dropped_blocks == 2
