"""jobs/online/bulk.py against the online merge it vectorises (jobs/online/recall.py), list by
list, on random indexes built to tie: few distinct scores, shared articles, short lists."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobs.online.bulk import Index, click_groups_of, top_k_hits
from jobs.online.recall import MERGES, merge

TAGS = [f"t{i}" for i in range(6)]
ARTICLES = [f"a{i:02d}" for i in range(25)]

index_rows = st.lists(st.tuples(st.sampled_from(TAGS), st.sampled_from(ARTICLES),
                                st.sampled_from([0.25, 0.5, 1.0, 0.1 + 0.2])),
                      max_size=60, unique_by=lambda r: (r[0], r[1]))
tag_list = st.lists(st.sampled_from(TAGS + ["unknown"]), max_size=5, unique=True)
lists = st.lists(st.tuples(tag_list, st.lists(st.sampled_from(ARTICLES + ["a99"]), max_size=8, unique=True)),
                 min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@example(rows=[("t0", "a01", 0.25), ("t1", "a00", 0.25), ("t3", "a00", 0.25)],
         users=[(["t4", "t0", "t1", "t3"], ["a00"])], k=1, block_cells=1 << 22, method="quota")  # t4: no list
@given(rows=index_rows, users=lists, k=st.integers(1, 30), block_cells=st.sampled_from([1, 40, 1 << 22]),
       method=st.sampled_from(MERGES))
def test_hits_equal_the_online_merge_list_by_list(rows, users, k, block_cells, method):
    by_tag: dict[str, list[tuple[str, float]]] = {}
    for tag, article, score in rows:
        by_tag.setdefault(tag, []).append((article, score))
    recalled = [{a for a, _, _ in merge([(t, r) for r, t in enumerate(tags, 1)], by_tag, k, method)}
                for tags, _ in users]
    group_of = {a: int(a[-1]) % 3 for a in ARTICLES}  # any grouping of the clicked articles
    expected = [[sum(a in got and group_of[a] == g for a in clicked) for g in range(3)]
                for got, (_, clicked) in zip(recalled, users, strict=True)]

    index = Index.build([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    entries = [(i, tag, rank) for i, (tags, _) in enumerate(users) for rank, tag in enumerate(tags, 1)]
    clicks = [(i, a) for i, (_, clicked) in enumerate(users) for a in clicked]
    got = top_k_hits(
        index, len(users),
        np.array([e[0] for e in entries], dtype=np.int64), index.rows_of([e[1] for e in entries]),
        np.array([e[2] for e in entries], dtype=np.int64),
        np.array([c[0] for c in clicks], dtype=np.int64), index.columns_of([c[1] for c in clicks]),
        k, block_cells=block_cells, method=method,
        click_groups=np.array([group_of.get(c[1], 0) for c in clicks], dtype=np.int64), n_groups=3)
    assert got.tolist() == expected


def test_an_empty_index_recalls_nothing():
    index = Index.build([], [], [])
    got = top_k_hits(index, 2, np.array([0]), index.rows_of(["t0"]), np.array([1]),
                     np.array([0]), index.columns_of(["a00"]), 5)
    assert got.tolist() == [0, 0]


def test_clicks_on_articles_outside_an_empty_index_fall_in_group_zero():
    index = Index.build([], [], [])
    columns = index.columns_of(["a00", "a01"])
    groups = click_groups_of(np.zeros(index.width, dtype=np.int64), columns)
    assert groups.tolist() == [0, 0]
    got = top_k_hits(index, 1, np.array([0]), index.rows_of(["t0"]), np.array([1]), np.array([0, 0]), columns, 5,
                     click_groups=groups, n_groups=2)
    assert got.tolist() == [[0, 0]]
