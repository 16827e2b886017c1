"""Online recall from Redis: a user's top tags, each tag's articles, merged (``tagrecall recall``).

This is the function the online service calls; it needs redis-py only, no Spark. The key
layout is in jobs/online/keys.py. A reader reads ``p:current`` once and then only keys of
that version, so it sees all of one day or all of another, never a mix; ``publish``
deletes a version only two switches after it stopped being current.

Merge (``recall.merge``, recorded in the version's meta by publish, so the service merges
as the day was evaluated). A user's tags carry ``w(rank) = 1 / log2(1 + rank)`` (the
discount of DCG: the first tag counts 1, the second 0.63, the tenth 0.29):

- ``rank_sum``: an article's score is the sum, over the user's tags whose index lists hold
  it, of ``w(rank) x score(tag, article)``; an article reached through several of the
  user's tags collects from each;
- ``probability``: p(article | user) = sum over tags of p(tag | user) p(article | tag), with
  p(tag | user) proportional to w(rank) and p(article | tag) the tag's index scores divided
  by their sum (math.fsum, so every reader sums alike): each tag's list weighs the same
  whatever the scale of its scores;
- ``quota``: the tags with a list, best first, each take their next best articles not yet
  taken, up to k x w(rank) / sum of w over those tags places (largest remainders get the
  rounding); places a short list leaves empty go to the best of the rest by ``rank_sum``.

Articles are ordered by their ``rank_sum`` (or ``probability``) score, rounded to 1e-9 so
that summation order cannot reorder near-ties, then by article_id; the top k are returned.
``jobs/evaluate.py`` computes the same merge for many users at once (jobs/online/bulk.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from jobs.online import redis_merge
from jobs.online.keys import Keys, escape
from jobs.online.weights import rank_weight
from schemas.config import RECALL_MERGES

log = logging.getLogger(__name__)

ROUND = 9
# Where the function cannot run for a reason that lasts (no library, a reader's rules without
# a command it sends), a process merges in Python for this long before trying it again, so a
# request does not pay a failing FCALL_RO first; and it repeats its warning, with how many
# requests merged in Python since, this often.
FALLBACK_RETRY_SEC = 30.0
FALLBACK_LOG_SEC = 60.0


MERGES = RECALL_MERGES


@dataclass
class Recalled:
    version: str
    date: str
    user_id: str
    source: str  # "user" (the user's own list) or "global" (no list for this user)
    tags: list[tuple[str, int]] = field(default_factory=list)  # (tag, rank)
    articles: list[tuple[str, float, list[str]]] = field(default_factory=list)  # (article, score, via tags)
    merge: str = "rank_sum"
    merged_in: str = "redis"  # "redis" (the function) or "python" (merge(), the fallback)


def normalised(items: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """A tag's (article, score) as p(article | tag): the scores over their sum (0 when it is 0)."""
    total = math.fsum(s for _, s in items)
    return [(a, s / total if total > 0 else 0.0) for a, s in items]


def quota_slots(ranks: list[int], k: int) -> list[int]:
    """Places per tag (in the order of ``ranks``): k x w(rank) / sum of w, rounded down, the
    remaining places to the largest remainders (then the better rank)."""
    w = [rank_weight(r) for r in ranks]
    total = math.fsum(w)
    exact = [k * x / total for x in w]
    slots = [math.floor(e) for e in exact]
    for i in sorted(range(len(ranks)), key=lambda i: (-(exact[i] - slots[i]), ranks[i]))[:k - sum(slots)]:
        slots[i] += 1
    return slots


def merge(tags: list[tuple[str, int]], lists: dict[str, list[tuple[str, float]]], k: int,
          method: str = "rank_sum") -> list[tuple[str, float, list[str]]]:
    """The documented merge: (article_id, score, tags it came through), best first, k at most."""
    if method not in MERGES:
        raise ValueError(f"unknown merge {method!r}; known: {', '.join(MERGES)}")
    ordered = sorted(tags, key=lambda t: t[1])
    score: dict[str, float] = {}
    via: dict[str, list[str]] = {}
    for tag, rank in ordered:
        w, items = rank_weight(rank), lists.get(tag, [])
        if method == "probability":  # w x p(article | tag)
            items = normalised(items)
        for article, s in items:
            score[article] = score.get(article, 0.0) + w * s
            via.setdefault(article, []).append(tag)
    rounded = {a: round(v, ROUND) for a, v in score.items()}
    ranked = sorted(rounded, key=lambda a: (-rounded[a], a))
    # The quota's places go to the tags with a list: an empty one would hand its places on anyway.
    listed = [(t, r) for t, r in ordered if lists.get(t)]
    if method == "quota" and listed:
        taken: set[str] = set()
        for (tag, _), slots in zip(listed, quota_slots([r for _, r in listed], k), strict=True):
            best = sorted(lists.get(tag, []), key=lambda item: (-item[1], item[0]))
            for article in (a for a, _ in best if a not in taken):
                if slots == 0:
                    break
                taken.add(article)
                slots -= 1
        ranked = [a for a in ranked if a in taken] + [a for a in ranked if a not in taken]
        ranked = sorted(ranked[:k], key=lambda a: (-rounded[a], a))
    return [(a, rounded[a], via[a]) for a in ranked[:k]]


def recall(client, user_id: str, k: int = 100, prefix: str = "tagrecall", attempts: int = 3) -> Recalled:
    """The user's recall from the current version, merged by Redis in one read-only call
    (jobs/online/redis_merge.py). Users without a published list get the version's global
    tags. Raises LookupError when nothing has been published.

    Where the function cannot run (its library is not loaded: run ``tagrecall redis-acl
    --apply``; the reader's rules lack ``+fcall_ro`` or a command the function sends:
    re-apply them; a rank past its weight table) the recall reads the lists and merges in
    Python (:func:`recall_python`, same answer, slower, ``merged_in="python"``) and logs
    why: at the first such request, then every FALLBACK_LOG_SEC with a count. A missing
    library or permission is remembered for FALLBACK_RETRY_SEC per server and user."""
    import redis

    server = _server(client, prefix)
    skipped = _SKIP_REDIS.get(server)
    if skipped and time.monotonic() < skipped[0]:
        _fall_back(skipped[1])
        return recall_python(client, user_id, k, prefix, attempts)
    lasting = True
    try:
        return recall_in_redis(client, user_id, k, prefix)
    except redis.exceptions.NoPermissionError as exc:
        reason = f"the Redis user may not run the recall's function ({exc})"
        if "redis-acl" not in str(exc):
            reason += ": re-apply the reader's rules (`tagrecall redis-acl --apply`)"
    except redis.ResponseError as exc:
        text = str(exc)
        if "Function not found" in text:
            reason = f"Redis holds no library {redis_merge.LIBRARY}: run {redis_merge.LOAD_COMMAND}"
        elif "can't run this command" in text:  # a library without its own check (NOPERM)
            reason = (f"the Redis user may not run a command the function sends ({text}): re-apply the "
                      "reader's rules (`tagrecall redis-acl --apply`)")
        elif "beyond the library's weights" in text:
            reason, lasting = text, False  # this user's ranks only
        else:
            raise
    if lasting:
        _SKIP_REDIS[server] = (time.monotonic() + FALLBACK_RETRY_SEC, reason)
    _fall_back(reason)
    return recall_python(client, user_id, k, prefix, attempts)


def recall_in_redis(client, user_id: str, k: int = 100, prefix: str = "tagrecall") -> Recalled:
    """:func:`recall` by the Redis function alone (FCALL_RO): raises what Redis answers."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    reply = client.fcall_ro(redis_merge.FUNCTION, 1, Keys(prefix).current, prefix, escape(user_id), k)
    if not reply:
        raise LookupError(f"nothing published under prefix {prefix!r}: run `tagrecall publish --date D` first")
    version, date, method, source, packed_tags, packed_articles = reply
    tags = [(tag, int(float(rank))) for tag, rank in redis_merge.unpack(packed_tags)]
    names = [t for t, _ in tags]
    via: dict[str, list[str]] = {}  # most articles share a handful of masks
    articles = []
    for a, score, mask in redis_merge.unpack(packed_articles):
        if mask not in via:
            via[mask] = redis_merge.via_tags(names, mask)
        articles.append((a, float(score), list(via[mask])))
    return Recalled(version, date, user_id, source, tags, articles, method)


_SKIP_REDIS: dict[tuple, tuple[float, str]] = {}  # (server, user, prefix) -> (retry after, reason)
_FALLBACKS: dict[str, list] = {}  # reason -> [requests merged in Python since the warning, its time]


def _server(client, prefix: str) -> tuple:
    kw = client.connection_pool.connection_kwargs
    return kw.get("host"), kw.get("port"), kw.get("path"), kw.get("db"), kw.get("username"), prefix


def _fall_back(reason: str) -> None:
    now = time.monotonic()
    seen = _FALLBACKS.setdefault(reason, [0, None])
    seen[0] += 1
    if seen[1] is None:
        log.warning("recall: merging in Python, not in Redis: %s", reason)
    elif now - seen[1] >= FALLBACK_LOG_SEC:
        log.warning("recall: merging in Python, not in Redis (%d request(s) in the last %.0f s): %s",
                    seen[0], now - seen[1], reason)
    else:
        return
    seen[:] = [0, now]


def reset_fallbacks() -> None:
    """Forget the reasons seen (the next request tries the function and warns again)."""
    _SKIP_REDIS.clear()
    _FALLBACKS.clear()


def recall_python(client, user_id: str, k: int = 100, prefix: str = "tagrecall", attempts: int = 3) -> Recalled:
    """:func:`recall` read into Python and merged by :func:`merge`: what the online recall did
    before the merge ran in Redis, and what it does when the Redis function cannot run."""
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
        method = meta.get("merge", "rank_sum")  # versions published before the merge was recorded
        source = "user" if own else "global"
        tags = [(t, int(r)) for t, r in (own or fallback)]
        pipe = client.pipeline(transaction=False)
        for tag, _ in tags:
            pipe.zrange(keys.tag(version, tag), 0, -1, withscores=True)
        lists = dict(zip([t for t, _ in tags], pipe.execute(), strict=True))
        if not client.exists(keys.meta(version)):
            continue
        return Recalled(version, meta.get("date", ""), user_id, source, tags, merge(tags, lists, k, method), method,
                        "python")
    raise RuntimeError(f"recall for {user_id}: the published version changed {attempts} times while reading")


def format_recall(r: Recalled, rows: int = 20) -> str:
    lines = [f"user {r.user_id}: version {r.version} (day {r.date}, merge {r.merge}, merged in {r.merged_in}), "
             f"{'own tags' if r.source == 'user' else 'no list for this user: the global tags'}",
             "tags: " + ", ".join(f"{rank}. {tag}" for tag, rank in r.tags),
             f"{len(r.articles)} articles; the first {min(rows, len(r.articles))}:",
             f"{'#':>4}  {'article_id':<24}{'score':>12}  via tags"]
    for i, (article, score, via) in enumerate(r.articles[:rows], 1):
        lines.append(f"{i:>4}  {article:<24}{score:>12.6f}  {', '.join(via)}")
    return "\n".join(lines)
