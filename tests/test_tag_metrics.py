"""The harness's tag metrics against a pandas computation of the same definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.tag_metrics import tag_metrics


def _by_pandas(lists: dict, clicks: list, k: int) -> dict:
    c = pd.DataFrame([(i, u, t) for i, (u, tags) in enumerate(clicks) for t in tags], columns=["click", "user", "tag"])
    rel = c[["user", "tag"]].drop_duplicates()
    top = pd.DataFrame([(u, t, i + 1) for u, ts in lists.items() for i, t in enumerate(ts[:k])],
                       columns=["user", "tag", "pos"])
    hits = rel.merge(top, on=["user", "tag"])
    users = rel.user.unique()
    n_rel = rel.groupby("user").size()
    n_hit = hits.groupby("user").size().reindex(users, fill_value=0)
    dcg = (1 / np.log2(hits.pos + 1)).groupby(hits.user).sum().reindex(users, fill_value=0.0)
    idcg = pd.Series({u: sum(1 / math.log2(i + 1) for i in range(1, min(k, n_rel[u]) + 1)) for u in users})
    covered = c.merge(top, on=["user", "tag"]).click.nunique()
    return {f"p@{k}": (n_hit / k).mean(), f"r@{k}": (n_hit / n_rel[users]).mean(),
            f"ndcg@{k}": (dcg / idcg[users]).mean(), f"click_coverage@{k}": covered / len(clicks)}


def test_metrics_equal_a_pandas_computation():
    rng = np.random.default_rng(3)
    vocab = [f"t{i}" for i in range(12)]
    users = [f"u{i}" for i in range(30)]
    lists = {u: list(rng.permutation(vocab)[:rng.integers(0, 11)]) for u in users[:25]}   # 5 users without a list
    clicks = [(users[rng.integers(0, 30)], list(rng.choice(vocab, rng.integers(1, 4), replace=False)))
              for _ in range(200)]
    got = tag_metrics(lists, clicks, ks=(1, 3, 5, 10), vocabulary=len(vocab))
    for k in (1, 3, 5, 10):
        want = _by_pandas(lists, clicks, k)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12), key
    shown = {t for u in {u for u, _ in clicks} for t in lists.get(u, [])[:3]}
    assert got["tag_coverage@3"] == len(shown) / len(vocab)


def test_a_perfect_list_scores_one():
    clicks = [("a", ["x", "y"]), ("a", ["y"]), ("b", ["z"])]
    got = tag_metrics({"a": ["y", "x", "q"], "b": ["z"]}, clicks, ks=(2,))
    assert got["r@2"] == 1.0 and got["ndcg@2"] == 1.0 and got["click_coverage@2"] == 1.0
    assert got["p@2"] == pytest.approx((1.0 + 0.5) / 2)


def test_users_without_a_tagged_click_are_left_out_and_a_repeated_tag_is_one_hit():
    # evaluate's rule (jobs/evaluate.py, tag_prediction): only users with a click on a tagged
    # article are averaged over; a tag is relevant once, whatever the list repeats.
    got = tag_metrics({"a": ["x", "y"], "b": ["x"]}, [("a", ["x"]), ("b", [])], ks=(1,))
    assert got["p@1"] == 1.0 and got["r@1"] == 1.0 and got["ndcg@1"] == 1.0 and got["users"] == 1.0
    assert got["click_coverage@1"] == 0.5  # the untagged click is still a click no tag can cover
    # [x, x, y] against {x, z}: one hit (x, position 1) in the first 3, not two.
    got = tag_metrics({"a": ["x", "x", "y"]}, [("a", ["x", "z"])], ks=(3,))
    ideal = 1.0 + 1.0 / math.log2(3)
    assert got["p@3"] == pytest.approx(1 / 3) and got["r@3"] == pytest.approx(1 / 2)
    assert got["ndcg@3"] == pytest.approx(1.0 / ideal)


def test_the_harness_and_evaluate_give_the_same_tag_metrics(spark):
    """The bench harness's P/R/NDCG@K equal evaluate's (its Spark computation, in a real
    session) on random lists and clicks, some of the clicks on untagged articles."""
    from jobs import evaluate

    rng = np.random.default_rng(5)
    vocab = [f"t{i}" for i in range(10)]
    users = [f"u{i}" for i in range(40)]
    lists = {u: list(rng.permutation(vocab)[:rng.integers(1, 11)]) for u in users[:32]}
    clicks = [(users[rng.integers(0, 40)], list(rng.choice(vocab, rng.integers(0, 3), replace=False)))
              for _ in range(120)]
    assert any(not tags for _, tags in clicks) and {u for u, t in clicks if t} != {u for u, _ in clicks}
    every = spark.createDataFrame([("m", u, t, i) for u, ts in lists.items() for i, t in enumerate(ts, 1)],
                                  "method string, user_id string, tag string, rank int")
    relevant = spark.createDataFrame(sorted({(u, t) for u, tags in clicks for t in tags}),
                                     "user_id string, tag string")
    n_relevant = len({u for u, tags in clicks if tags})
    sums = evaluate.tag_prediction(every, relevant)["m"]
    got = tag_metrics(lists, clicks, ks=evaluate.TAG_KS)
    for k in evaluate.TAG_KS:
        for ours, theirs in (("p", "precision"), ("r", "recall"), ("ndcg", "ndcg")):
            assert got[f"{ours}@{k}"] == pytest.approx(sums[f"tag_{theirs}_at_{k}"] / n_relevant, rel=1e-12), \
                (ours, k)
