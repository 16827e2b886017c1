"""Online recall from Redis: a user's top tags, each tag's articles, merged (``tagrecall recall``).

This is the function the online service calls; it needs redis-py only, no Spark. The key
layout is in jobs/online/keys.py. A reader reads ``p:current`` once and then only keys of
that version, so it sees all of one day or all of another, never a mix; ``publish``
deletes a version only two switches after it stopped being current.

Merge: an article's recall score is the sum, over the user's tags whose index lists hold
it, of ``w(rank) x score(tag, article)`` with ``w(rank) = 1 / log2(1 + rank)`` (the
discount of DCG: the first tag counts 1, the second 0.63, the tenth 0.29). An article
reached through several of the user's tags collects from each. Articles are ordered by
that score (rounded to 1e-9, so that summation order cannot reorder near-ties), then by
article_id; the top k are returned. ``jobs/evaluate.py`` computes the same merge in Spark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jobs.online.keys import Keys

ROUND = 9


def rank_weight(rank: int) -> float:
    return 1.0 / math.log2(1.0 + rank)


@dataclass
class Recalled:
    version: str
    date: str
    user_id: str
    source: str  # "user" (the user's own list) or "global" (no list for this user)
    tags: list[tuple[str, int]] = field(default_factory=list)  # (tag, rank)
    articles: list[tuple[str, float, list[str]]] = field(default_factory=list)  # (article, score, via tags)


def merge(tags: list[tuple[str, int]], lists: dict[str, list[tuple[str, float]]], k: int
          ) -> list[tuple[str, float, list[str]]]:
    """The documented merge: (article_id, score, tags it came through), best first, k at most."""
    score: dict[str, float] = {}
    via: dict[str, list[str]] = {}
    for tag, rank in sorted(tags, key=lambda t: t[1]):
        w = rank_weight(rank)
        for article, s in lists.get(tag, []):
            score[article] = score.get(article, 0.0) + w * s
            via.setdefault(article, []).append(tag)
    ranked = sorted(score, key=lambda a: (-round(score[a], ROUND), a))[:k]
    return [(a, round(score[a], ROUND), via[a]) for a in ranked]


def recall(client, user_id: str, k: int = 100, prefix: str = "tagrecall", attempts: int = 3) -> Recalled:
    """The user's recall from the current version. Users without a published list get the
    version's global tags. Raises LookupError when nothing has been published."""
    keys = Keys(prefix)
    for _ in range(attempts):
        version = client.get(keys.current)
        if version is None:
            raise LookupError(f"nothing published under prefix {prefix!r}: run `tagrecall publish --date D` first")
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(keys.meta(version))
        pipe.zrange(keys.user(version, user_id), 0, -1, withscores=True)
        pipe.zrange(keys.global_tags(version), 0, -1, withscores=True)
        meta, own, fallback = pipe.execute()
        if not meta:  # the version was deleted after we read the pointer: read it again
            continue
        source = "user" if own else "global"
        tags = [(t, int(r)) for t, r in (own or fallback)]
        pipe = client.pipeline(transaction=False)
        for tag, _ in tags:
            pipe.zrange(keys.tag(version, tag), 0, -1, withscores=True)
        lists = dict(zip([t for t, _ in tags], pipe.execute(), strict=True))
        if not client.exists(keys.meta(version)):
            continue
        return Recalled(version, meta.get("date", ""), user_id, source, tags, merge(tags, lists, k))
    raise RuntimeError(f"recall for {user_id}: the published version changed {attempts} times while reading")


def format_recall(r: Recalled, rows: int = 20) -> str:
    lines = [f"user {r.user_id}: version {r.version} (day {r.date}), "
             f"{'own tags' if r.source == 'user' else 'no list for this user: the global tags'}",
             "tags: " + ", ".join(f"{rank}. {tag}" for tag, rank in r.tags),
             f"{len(r.articles)} articles; the first {min(rows, len(r.articles))}:",
             f"{'#':>4}  {'article_id':<24}{'score':>12}  via tags"]
    for i, (article, score, via) in enumerate(r.articles[:rows], 1):
        lines.append(f"{i:>4}  {article:<24}{score:>12.6f}  {', '.join(via)}")
    return "\n".join(lines)
