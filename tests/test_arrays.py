"""bgkit.arrays: evenly spaced subsets of time-ordered items."""
from __future__ import annotations

import numpy as np
import pytest

from bgkit import BgkitError
from bgkit.arrays import evenly_spaced


def test_evenly_spaced_keeps_the_ends_and_spaces_the_rest_evenly():
    idx = evenly_spaced(101, 5)
    assert idx.tolist() == [0, 25, 50, 75, 100]  # written out: every 25th of 0..100
    idx = evenly_spaced(1000, 7)
    assert len(idx) == 7 and idx[0] == 0 and idx[-1] == 999
    gaps = np.diff(idx)
    assert gaps.min() >= 166 and gaps.max() <= 167  # 999 / 6 = 166.5, rounded either way
    assert len(np.unique(evenly_spaced(10, 9))) == 9  # fewer than all: no index twice


@pytest.mark.parametrize("n, limit", [(10, None), (10, 10), (10, 50), (0, 3), (0, None)])
def test_evenly_spaced_gives_everything_when_there_is_no_more_than_the_limit(n, limit):
    assert evenly_spaced(n, limit).tolist() == list(range(n))


def test_evenly_spaced_edge_limits():
    assert evenly_spaced(10, 1).tolist() == [0]
    assert evenly_spaced(10, 0).tolist() == []
    with pytest.raises(BgkitError, match="limit"):
        evenly_spaced(10, -1)
