"""The weight of a user's tag by its rank, ``w(rank) = 1 / log2(1 + rank)`` (the discount of
DCG): one definition for the Python merge (jobs/online/recall.py) and the Lua library
that merges in Redis (jobs/online/redis_merge.py), which has the weights written in."""

from __future__ import annotations

import math


def rank_weight(rank: int) -> float:
    return 1.0 / math.log2(1.0 + rank)
