"""The merges of a user's tag lists (jobs/online/recall.py) against hand arithmetic."""

from __future__ import annotations

import math

import pytest

from jobs.online.recall import merge, quota_slots

W2 = 1 / math.log2(3)  # the second tag's weight
LISTS = {"A": [("x", 4.0), ("y", 2.0), ("z", 2.0)], "B": [("y", 3.0), ("w", 1.0)]}
TAGS = [("A", 1), ("B", 2)]


def test_rank_sum_adds_the_rank_weighted_scores():
    got = merge(TAGS, LISTS, 3, "rank_sum")
    assert [(a, via) for a, _, via in got] == [("x", ["A"]), ("y", ["A", "B"]), ("z", ["A"])]
    assert [s for _, s, _ in got] == pytest.approx([4.0, 2.0 + 3.0 * W2, 2.0], abs=1e-9)


def test_probability_normalises_each_tag_before_weighting():
    # p(a | A): x .5, y .25, z .25; p(a | B): y .75, w .25.
    got = merge(TAGS, LISTS, 4, "probability")
    assert [a for a, _, _ in got] == ["y", "x", "z", "w"]
    assert [s for _, s, _ in got] == pytest.approx([0.25 + 0.75 * W2, 0.5, 0.25, 0.25 * W2], abs=1e-9)


def test_quota_gives_each_tag_its_share_of_places():
    # k x w / sum w = 1.84 and 1.16: floors 1 and 1, the last place to the larger remainder (A).
    assert quota_slots([1, 2], 3) == [2, 1]
    # A takes x then y (y before z on the tie), B's best is y, already taken, so B takes w:
    # z, which rank_sum returns, is left out. Ordered by the rank_sum score.
    got = merge(TAGS, LISTS, 3, "quota")
    assert [a for a, _, _ in got] == ["x", "y", "w"]
    assert [s for _, s, _ in got] == pytest.approx([4.0, 2.0 + 3.0 * W2, W2], abs=1e-9)


def test_quota_places_a_short_list_leaves_go_to_the_best_of_the_rest():
    lists = {"A": [("x", 0.1)], "B": [("y", 5.0), ("z", 4.0), ("v", 3.0)]}
    assert quota_slots([1, 2], 3) == [2, 1]
    # A takes x (its second place stays empty), B takes y; the empty place goes to the best
    # of the rest by rank_sum, z (4 x 0.63 against v's 3 x 0.63). rank_sum alone returns y, z, v.
    got = merge(TAGS, lists, 3, "quota")
    assert [a for a, _, _ in got] == ["y", "z", "x"]
    assert [a for a, _, _ in merge(TAGS, lists, 3, "rank_sum")] == ["y", "z", "v"]
    assert quota_slots([1, 2, 3], 0) == [0, 0, 0]


def test_quota_places_go_to_the_tags_with_a_list():
    # B (rank 2) has no list: A and C share the 2 places by their weights 1 and 0.5 -> 1 and 1.
    lists = {"A": [("x", 4.0), ("y", 3.0)], "C": [("z", 1.0)]}
    assert quota_slots([1, 3], 2) == [1, 1]
    assert [a for a, _, _ in merge([("A", 1), ("B", 2), ("C", 3)], lists, 2, "quota")] == ["x", "z"]


def test_an_unknown_merge_is_refused():
    with pytest.raises(ValueError, match="unknown merge 'max'"):
        merge(TAGS, LISTS, 3, "max")
