"""Tag-prediction metrics: how well a ranked tag list per user names the tags of the
articles the user clicks the next day (never the tags of their history).

For each user with at least one click on a tagged article, R = the distinct tags of the
clicked articles and L the user's ranked list (a tag L repeats counts at its first
position only):

- P@K = |L[:K] & R| / K, R@K = |L[:K] & R| / |R|;
- NDCG@K = sum over the hits at positions i (1-based) of 1 / log2(i + 1), divided by the
  same sum for an ideal list (min(K, |R|) hits first);
- click coverage@K: the share of clicks whose article carries a tag of L[:K];
- tag coverage@K: the distinct tags recommended at K over all users / the vocabulary size.

Means are over those users (P, R, NDCG: users whose clicks carry no tag are left out,
as jobs/evaluate.py's tag_prediction leaves them out) or over every click (click
coverage). Pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def tag_metrics(lists: Mapping[str, Sequence[str]], clicks: Iterable[tuple[str, Sequence[str]]],
                ks: Sequence[int] = (1, 3, 5, 10), vocabulary: int | None = None) -> dict[str, float]:
    """``lists``: user -> ranked tags; ``clicks``: (user, the clicked article's tags) per
    click. Users without a list count with an empty one."""
    clicked: dict[str, set[str]] = {}
    per_click: list[tuple[str, set[str]]] = []
    for user, tags in clicks:
        tags = set(tags)
        clicked.setdefault(user, set()).update(tags)
        per_click.append((user, tags))
    relevant = {u: tags for u, tags in clicked.items() if tags}
    out: dict[str, float] = {"users": float(len(relevant)), "clicks": float(len(per_click))}
    for k in ks:
        p = r = ndcg = 0.0
        for user, rel in relevant.items():
            top = list(lists.get(user, ()))[:k]
            hits = [i for i, t in enumerate(top, 1) if t in rel and t not in top[:i - 1]]
            p += len(hits) / k
            r += len(hits) / len(rel)
            ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(rel)) + 1))
            ndcg += sum(1.0 / math.log2(i + 1) for i in hits) / ideal
        n = max(len(relevant), 1)
        covered = sum(bool(set(list(lists.get(u, ()))[:k]) & tags) for u, tags in per_click)
        out |= {f"p@{k}": p / n, f"r@{k}": r / n, f"ndcg@{k}": ndcg / n,
                f"click_coverage@{k}": covered / max(len(per_click), 1)}
        if vocabulary:
            shown = {t for u in clicked for t in list(lists.get(u, ()))[:k]}
            out[f"tag_coverage@{k}"] = len(shown) / vocabulary
    return out
