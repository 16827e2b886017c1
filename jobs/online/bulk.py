"""The merge of jobs/online/recall.py for many lists at once, in numpy: how many of each
list's clicked articles its top k would return. ``tagrecall evaluate`` calls it inside
Spark (mapInArrow), one list per (user, method).

It is the same arithmetic as ``recall.merge``: an article's score is the sum over the
list's tags, in rank order, of ``rank_weight(rank) x score(tag, article)`` (under the
``probability`` merge, the tag's scores over their sum: ``Index.normalised``), rounded to
``ROUND`` digits; articles are ordered by that score, then by article_id; the first k are
returned. The ``quota`` merge takes articles tag by tag, which does not vectorise: its lists
are merged by ``recall.merge`` itself, one at a time. Instead of a dictionary per user it adds into a dense (lists x articles) block
with ``np.bincount`` and picks the top k with ``np.partition``; blocks hold at most
``block_cells`` cells, so memory stays bounded whatever the number of lists. Its cost is
the list's tags x their index lengths, plus lists x the index's distinct articles.

One difference from ``round``: numpy rounds x * 10^9 half to even, Python's ``round``
rounds the exact binary value, so a sum within a rounding step's last bit of a boundary
may round the other way. Ties between articles are only ever reordered by that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jobs.online.recall import ROUND, merge, rank_weight


@dataclass(frozen=True)
class Index:
    """A tag index laid out for the merge: tag ``tags[i]``'s articles are
    ``columns[offsets[i]:offsets[i + 1]]`` (positions in ``article_ids``, which is sorted,
    so a lower column wins a tie) with ``scores`` beside them."""

    tags: dict[str, int]
    offsets: np.ndarray
    columns: np.ndarray
    scores: np.ndarray
    article_ids: np.ndarray

    @classmethod
    def build(cls, tags, article_ids, scores) -> Index:
        """From the index's rows (tag, article_id, score), in any order."""
        tags, article_ids = np.asarray(tags, dtype=object), np.asarray(article_ids, dtype=object)
        scores = np.asarray(scores, dtype=np.float64)
        names, tag_codes = np.unique(tags.astype(str), return_inverse=True)
        articles, columns = np.unique(article_ids.astype(str), return_inverse=True)
        order = np.argsort(tag_codes, kind="stable")
        counts = np.bincount(tag_codes, minlength=len(names))
        return cls(tags={t: i for i, t in enumerate(names.tolist())},
                   offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   columns=columns[order].astype(np.int64), scores=scores[order], article_ids=articles)

    def normalised(self) -> Index:
        """The same index with each tag's scores over their sum (``recall.normalised``)."""
        scores = self.scores.copy()
        for lo, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            total = math.fsum(scores[lo:hi].tolist())
            scores[lo:hi] = scores[lo:hi] / total if total > 0 else 0.0
        return Index(self.tags, self.offsets, self.columns, scores, self.article_ids)

    def lists(self) -> dict[str, list[tuple[str, float]]]:
        """{tag: [(article_id, score)]}: the index as recall.merge takes it."""
        return {t: list(zip(self.article_ids[self.columns[self.offsets[i]:self.offsets[i + 1]]].tolist(),
                            self.scores[self.offsets[i]:self.offsets[i + 1]].tolist(), strict=True))
                for t, i in self.tags.items()}

    @property
    def width(self) -> int:
        return len(self.article_ids)

    def rows_of(self, tags) -> np.ndarray:
        """Each tag's row, -1 for a tag without articles."""
        return np.fromiter((self.tags.get(t, -1) for t in tags), dtype=np.int64, count=len(tags))

    def columns_of(self, article_ids) -> np.ndarray:
        """Each article's column, -1 for an article the index does not hold."""
        ids = np.asarray(article_ids, dtype=object).astype(str)
        if not self.width:
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.searchsorted(self.article_ids, ids).clip(0, self.width - 1)
        return np.where(self.article_ids[at] == ids, at, -1)


def top_k_hits(index: Index, n_lists: int, list_of: np.ndarray, tag_rows: np.ndarray, ranks: np.ndarray,
               click_list: np.ndarray, click_columns: np.ndarray, k: int, block_cells: int = 1 << 22,
               method: str = "rank_sum", click_groups: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    """For ``n_lists`` lists: how many of list i's clicked articles are in its top ``k``
    under the merge ``method``, per group of clicks when ``click_groups`` (0..n_groups-1 per
    click) is given: an (n_lists, n_groups) array, else (n_lists,).

    A list is its entries (``list_of`` = i, ``tag_rows`` from ``Index.rows_of``, ``ranks``
    from 1); a click is (``click_list``, ``click_columns`` from ``Index.columns_of``),
    each (list, article) once. Tags and articles the index does not hold (-1) are ignored:
    they reach nothing and cannot be reached."""
    groups = np.zeros(len(click_list), dtype=np.int64) if click_groups is None else np.asarray(click_groups)
    hits = np.zeros((n_lists, n_groups), dtype=np.int64)
    width = index.width
    if width == 0 or n_lists == 0:
        return hits if click_groups is not None else hits[:, 0]
    if method == "probability":
        index = index.normalised()
    keep = tag_rows >= 0
    list_of, tag_rows, ranks = list_of[keep], tag_rows[keep], ranks[keep]
    order = np.lexsort((ranks, list_of))  # by list, then rank: recall.merge's order of summation
    list_of, tag_rows, ranks = list_of[order], tag_rows[order], ranks[order]
    weights = _weights(ranks)[ranks]
    clicked = click_columns >= 0
    click_list, click_columns, groups = click_list[clicked], click_columns[clicked], groups[clicked]
    corder = np.argsort(click_list, kind="stable")
    click_list, click_columns, groups = click_list[corder], click_columns[corder], groups[corder]
    quota = _QuotaLists(index) if method == "quota" else None
    step = max(1, block_cells // width)
    for first in range(0, n_lists, step):
        last = min(first + step, n_lists)
        lo, hi = np.searchsorted(list_of, [first, last])
        clo, chi = np.searchsorted(click_list, [first, last])
        if clo == chi:
            continue
        if method == "quota":
            block = quota.top_k(last - first, list_of[lo:hi] - first, tag_rows[lo:hi], ranks[lo:hi], k)
        else:
            block = _top_k(index, last - first, list_of[lo:hi] - first, tag_rows[lo:hi], weights[lo:hi], k)
        rows = click_list[clo:chi] - first
        cells = rows * n_groups + groups[clo:chi]
        hits[first:last] = np.bincount(cells, weights=block[rows, click_columns[clo:chi]],
                                       minlength=(last - first) * n_groups).reshape(-1, n_groups).astype(np.int64)
    return hits if click_groups is not None else hits[:, 0]


class _QuotaLists:
    """The index as recall.merge takes it, built once, for the quota merge's lists."""

    def __init__(self, index: Index):
        self.width = index.width
        self.names = np.array(sorted(index.tags, key=index.tags.get), dtype=object)
        self.lists = index.lists()
        self.column = {a: i for i, a in enumerate(index.article_ids.tolist())}

    def top_k(self, n: int, rows: np.ndarray, tag_rows: np.ndarray, ranks: np.ndarray, k: int) -> np.ndarray:
        """(n, width) booleans: the articles each of the n lists returns, list by list."""
        out = np.zeros((n, self.width), dtype=bool)
        bounds = np.searchsorted(rows, np.arange(n + 1))
        for i in range(n):
            tags = list(zip(self.names[tag_rows[bounds[i]:bounds[i + 1]]].tolist(),
                            ranks[bounds[i]:bounds[i + 1]].tolist(), strict=True))
            for article, _, _ in merge(tags, self.lists, k, "quota"):
                out[i, self.column[article]] = True
        return out


def click_groups_of(groups: np.ndarray, click_columns: np.ndarray) -> np.ndarray:
    """Each click's group from its article's column (``groups`` per column); 0 for a click on
    an article the index does not hold (it can never be a hit)."""
    out = np.zeros(len(click_columns), dtype=np.int64)
    held = click_columns >= 0
    out[held] = groups[click_columns[held]]
    return out


def _weights(ranks: np.ndarray) -> np.ndarray:
    """rank_weight(r) for r = 0..max(ranks), computed as recall.merge computes it."""
    return np.array([0.0] + [rank_weight(r) for r in range(1, int(ranks.max(initial=0)) + 1)])


def _top_k(index: Index, n: int, rows: np.ndarray, tag_rows: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """(n, width) booleans: the articles each of the n lists returns."""
    width = index.width
    starts, lengths = index.offsets[tag_rows], index.offsets[tag_rows + 1] - index.offsets[tag_rows]
    entry = np.repeat(np.arange(len(rows)), lengths)
    within = np.arange(len(entry)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    at = starts[entry] + within
    cells = rows[entry] * width + index.columns[at]
    score = np.bincount(cells, weights=weights[entry] * index.scores[at], minlength=n * width).reshape(n, width)
    reached = np.zeros(n * width, dtype=bool)
    reached[cells] = True
    reached = reached.reshape(n, width)
    score = np.where(reached, np.round(score, ROUND), -np.inf)
    if width <= k:
        return reached
    kth = np.partition(score, width - k, axis=1)[:, width - k][:, None]
    above = score > kth
    tied = (score == kth) & reached
    room = k - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= room))
