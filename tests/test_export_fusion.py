"""Export's fusion ranks (jobs/export.py, ranking "tag_model") against the rules of its
docstring, computed by hand in pandas on random lists that overlap."""

from __future__ import annotations

import random

import pandas as pd
import pytest

TOP_M, COUNT = 4, 6


def _random_lists(seed: int):
    rng = random.Random(seed)
    tags = [f"t{i}" for i in range(12)]
    cands, learned, mixed = [], [], []
    for u in range(30):
        user = f"u{u}"
        for t in rng.sample(tags, rng.randint(0, COUNT)):
            cands.append((user, t, rng.choice([1.0, 2.0, 3.0, -1.0, -2.0])))   # ties in prior, broken by tag
        for r, t in enumerate(rng.sample(tags, rng.randint(0, TOP_M)), 1):
            learned.append((user, t, r))
        for r, t in enumerate(rng.sample(tags, rng.randint(0, COUNT)), 1):
            mixed.append((user, t, r))
    return cands, learned, mixed


def _by_hand(cands, learned, mixed):
    """(user, tag) -> (prior, tm_rank, mix_rank): the candidates and the model's tags, the
    model's rank or top_m + the order by prior (desc, nulls last, then tag) of the tags it
    did not rank; mix's other tags at count + 1; mix_rank = mix's rank or count + 1."""
    prior, tm, mix = {}, {}, {}
    for u, t, p in cands:
        prior[(u, t)] = max(prior.get((u, t), p), p)
    for u, t, r in learned:
        tm[(u, t)] = r
        prior.setdefault((u, t), None)
    for u, t, r in mixed:
        mix[(u, t)] = r
    out = {}
    for u in {u for u, _ in prior}:
        unranked = sorted((t for (v, t) in prior if v == u and (v, t) not in tm),
                          key=lambda t: (prior[(u, t)] is None, -(prior[(u, t)] or 0.0), t))
        for i, t in enumerate(unranked, 1):
            out[(u, t)] = (prior[(u, t)], TOP_M + i)
        for (v, t), r in tm.items():
            if v == u:
                out[(u, t)] = (prior[(u, t)], r)
    for key in mix:
        out.setdefault(key, (None, COUNT + 1))
    return {k: (p, r, mix.get(k, COUNT + 1)) for k, (p, r) in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fusion_ranks_follow_the_rules(spark, seed):
    from jobs import export

    cands, learned, mixed = _random_lists(seed)
    c = spark.createDataFrame(cands, "user_id string, tag string, prior double")
    lr = spark.createDataFrame(learned, "user_id string, tag string, rank int")
    m = spark.createDataFrame(mixed, "user_id string, tag string, rank int")
    got = export.fusion_ranks(c, lr, m, TOP_M, COUNT).toPandas()
    assert not got.duplicated(["user_id", "tag"]).any()
    got = {(r.user_id, r.tag): (None if pd.isna(r.prior) else r.prior, int(r.tm_rank), int(r.mix_rank))
           for r in got.itertuples()}
    assert got == _by_hand(cands, learned, mixed)
    # Without mix: every rank by mix is count + 1, and no tag of mix's joins.
    got = export.fusion_ranks(c, lr, None, TOP_M, COUNT).toPandas()
    want = {k: (p, r, COUNT + 1) for k, (p, r, _) in _by_hand(cands, learned, []).items()}
    assert {(r.user_id, r.tag): (None if pd.isna(r.prior) else r.prior, int(r.tm_rank), int(r.mix_rank))
            for r in got.itertuples()} == want
