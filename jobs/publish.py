"""Publish step: D's ``tag_index`` and ``user_top_tags`` -> Redis, switched in atomically.

1. PING the server first (nothing is read or written when it is down).
2. Take ``p:lock``, one publish at a time under the prefix, and hold it through step 6: the
   step lock is per day, so a manual ``publish --date`` can overlap the scheduled publish
   of another day, whose clean-up would delete this one's keys while they are written. A
   daemon thread renews it (it lapses LOCK_TTL_SEC after a killed publish); a publish
   waits up to LOCK_WAIT_SEC for it, then stops with PublishLocked.
   Under the lock, check that Redis holds this build's library of the online recall's
   function (jobs/online/redis_merge.py, ``tagrecall_v<N>``; a probe FCALL_RO). Publish
   never loads it (FUNCTION LOAD has no key scope, so the writer may not run it): when it
   is missing, publish logs a warning naming ``tagrecall redis-acl --apply``, which loads it
   as an administrator, and goes on; until then the recall merges in Python.
3. Name a new version ``D@<epoch ms>`` and add it to ``p:versions`` before writing, so a
   publish killed half-way leaves keys that the next publish finds and deletes.
4. Write every user's tags and every tag's articles as sorted sets from the Spark
   executors (foreachPartition, one connection per partition, ``publish.pipeline_size``
   commands per round trip), with each tag's score sum (math.fsum) in ``p:v:<version>:sums``
   for the probability merge, then the global list for users without tags; count the keys
   and members sent and then those Redis holds (SCAN and ZCARD), and compare both with
   the tables. Nothing is switched on a mismatch. Members are counted as sent once their
   pipeline succeeded, not by ZADD's reply (the number *added*), so a retried Spark task
   that rewrites members already there counts them again instead of zero; what Redis holds
   catches keys lost after they were sent.
5. Write the version's meta hash, then in one MULTI/EXEC (under WATCH of the pointer and
   the lock, so two publishers cannot interleave and a publish that lost its lock cannot
   switch) set ``p:current`` to the new version and ``p:previous`` to the old.
6. Delete every other version (meta hash first, so a reader that still holds its name
   notices and re-reads the pointer).

``--rollback`` swaps ``p:current`` and ``p:previous`` in one transaction (run it again to
undo). Sorted sets because a reader needs a user's tags in rank order and a tag's articles
with their scores, in one command each. The key layout is in jobs/online/keys.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import socket
import threading
import time
import uuid

import redis
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.entry import Option, Step
from jobs.common.storage import Warehouse
from jobs.online.keys import (
    NOT_CONFIGURED,
    Connection,
    Keys,
    RedisUnavailable,
    connect,
    connection,
    redis_url,
)
from jobs.online.redis_merge import library_status
from jobs.transforms.tag_lists import global_tags
from schemas.config import Config, redact_url

log = logging.getLogger(__name__)

NAME = "publish"

LOCK_TTL_SEC = 30.0  # renewed every third of it while held; a killed publish's lapses after it
LOCK_WAIT_SEC = 300.0  # how long a publish waits for another to finish before giving up


class PublishLocked(RuntimeError):
    """Another publish holds the prefix's lock, or this one lost it."""


class PublishLock:
    """``p:lock`` holding a token of this publish (SET NX PX), renewed by a daemon thread
    until released; released only by its holder (compare and delete in a transaction)."""

    def __init__(self, client, keys: Keys, owner: str, ttl_sec: float = LOCK_TTL_SEC):
        self.client, self.key, self.owner, self.ttl_ms = client, keys.lock, owner, int(ttl_sec * 1000)
        self.token = f"{owner} on {socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, wait_sec: float) -> None:
        deadline = time.monotonic() + wait_sec
        while not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            if time.monotonic() >= deadline:
                raise PublishLocked(f"{self.owner}: another publish is already publishing under {self.key} "
                                    f"({self.client.get(self.key) or 'it has just ended'}); waited "
                                    f"{wait_sec:g} s for it. Re-run this publish once it is done")
            time.sleep(0.2)
        self._renewer = threading.Thread(target=self._renew, name=f"renew {self.key}", daemon=True)
        self._renewer.start()

    def _if_held(self, action) -> bool:
        """``action(pipe)`` in a transaction, if the lock still holds our token."""
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) != self.token:
                    return False
                pipe.multi()
                action(pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._if_held(lambda pipe: pipe.set(self.key, self.token, px=self.ttl_ms)):
                    return  # lost: the switch sees it and refuses
            except redis.RedisError:
                continue  # the publish itself meets the error and reports it

    def held(self) -> bool:
        return self.client.get(self.key) == self.token

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        with contextlib.suppress(redis.RedisError):  # else it lapses after its time to live
            self._if_held(lambda pipe: pipe.delete(self.key))


def _writer(conn: Connection, keys: Keys, version: str, kind: str, batch: int, written, members):
    """A foreachPartition function writing rows (key, [(member, score)]) as sorted sets."""

    def write(rows) -> None:
        client = conn.client()
        pipe = client.pipeline(transaction=False)
        pending = sent = n_keys = n_members = 0
        for row in rows:
            mapping = {m: float(s) for m, s in row["items"]}
            key = keys.user(version, row["key"]) if kind == "user" else keys.tag(version, row["key"])
            pipe.zadd(key, mapping)
            if kind == "tag":  # the probability merge's denominator, summed as recall.normalised sums it
                pipe.hset(keys.sums(version), row["key"], repr(math.fsum(mapping.values())))
            pending += 1
            sent += len(mapping)
            if pending >= batch:
                pipe.execute()  # raises on any failed command: nothing is counted then
                n_keys, n_members, pending, sent = n_keys + pending, n_members + sent, 0, 0
        if pending:
            pipe.execute()
            n_keys, n_members = n_keys + pending, n_members + sent
        client.close()
        written.add(n_keys)
        members.add(n_members)

    return write


def _write_sets(spark: SparkSession, df: DataFrame, conn: Connection, keys: Keys, version: str, kind: str,
                batch: int) -> tuple[int, int]:
    written, members = spark.sparkContext.accumulator(0), spark.sparkContext.accumulator(0)
    try:
        df.foreachPartition(_writer(conn, keys, version, kind, batch, written, members))
    except Exception as exc:  # a task's Redis error arrives wrapped in Spark's (PythonException, Py4J)
        cause = redis_cause(exc)
        if cause is None:
            raise
        raise redis.ConnectionError(f"a Spark task writing {kind} keys failed: {cause}") from None
    return written.value, members.value


def redis_cause(exc: BaseException) -> str | None:
    """The ``redis.exceptions.X: message`` line of a Spark task failure, or None."""
    for line in reversed(str(exc).splitlines()):
        if line.strip().startswith("redis.exceptions."):
            return line.strip().removeprefix("redis.exceptions.")
    return None


def delete_version(client, keys: Keys, version: str, batch: int = 1000) -> int:
    """Every key of ``version``, meta first; returns how many were deleted."""
    deleted = client.delete(keys.meta(version))
    chunk: list[str] = []
    for key in client.scan_iter(match=keys.version_pattern(version), count=batch):
        chunk.append(key)
        if len(chunk) >= batch:
            deleted += client.unlink(*chunk)
            chunk = []
    if chunk:
        deleted += client.unlink(*chunk)
    client.srem(keys.versions, version)
    return deleted


def switch(client, keys: Keys, version: str, lock: PublishLock | None = None) -> str | None:
    """Make ``version`` current and the old current previous, atomically; returns the old one.
    With ``lock``, only while it is held (PublishLocked otherwise)."""
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.current, *([keys.lock] if lock else []))
                if lock is not None and pipe.get(keys.lock) != lock.token:
                    raise PublishLocked(f"this publish lost {keys.lock} before switching to {version} "
                                        f"(its holder now: {pipe.get(keys.lock) or 'none'})")
                old = pipe.get(keys.current)
                pipe.multi()
                pipe.set(keys.current, version)
                if old and old != version:
                    pipe.set(keys.previous, old)
                pipe.execute()
                return old
            except redis.WatchError:
                continue  # another publisher switched in between: read the pointer again


def rollback(client, keys: Keys) -> tuple[str, str]:
    """Swap current and previous atomically; returns (now current, now previous)."""
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.current, keys.previous)
                cur, prev = pipe.get(keys.current), pipe.get(keys.previous)
                if not prev or not pipe.exists(keys.meta(prev)):
                    raise RuntimeError("nothing to roll back to: no previous version is kept in Redis "
                                       f"(current: {cur or 'none'})")
                pipe.multi()
                pipe.set(keys.current, prev)
                pipe.set(keys.previous, cur)
                pipe.execute()
                return prev, cur
            except redis.WatchError:
                continue


def counts_in_redis(client, keys: Keys, version: str, batch: int = 1000) -> dict[str, int]:
    """Keys and members of ``version`` as Redis holds them (SCAN, then ZCARD per key)."""
    held = {}
    for kind, name in (("user", "users"), ("tag", "tags")):
        n_keys = n_members = 0
        names = list(client.scan_iter(match=keys.version_pattern(version, kind), count=batch))
        for start in range(0, len(names), batch):
            pipe = client.pipeline(transaction=False)
            for key in names[start:start + batch]:
                pipe.zcard(key)
            cards = pipe.execute()
            n_keys, n_members = n_keys + len(cards), n_members + sum(cards)
        held[name], held[f"{kind}_members"] = n_keys, n_members
    held["global_tags"] = client.zcard(keys.global_tags(version))
    held["tag_sums"] = client.hlen(keys.sums(version))
    return held


def skip_reason(_spark, config: Config, _date: dt.date) -> str | None:
    return None if redis_url(config) else NOT_CONFIGURED


def refuse_unservable_scores(index: DataFrame, day: str) -> None:
    """ValueError naming the tag and article of scores that are negative or not finite: the
    online recall's merge in Redis bounds its window on scores >= 0 (jobs/online/redis_merge.py),
    and ZADD cannot hold NaN."""
    score = F.col("score")
    bad = score.isNull() | F.isnan(score) | (score < 0) | (score == float("inf"))  # NaN < 0 is false
    rows = index.filter(bad).select("tag", "article_id", "score").orderBy("tag", "article_id").limit(4).collect()
    if rows:
        shown = "; ".join(f"tag {r['tag']!r}, article {r['article_id']!r}: {r['score']}" for r in rows[:3])
        raise ValueError(f"publish {day}: tag_index holds scores that are negative or not finite ({shown}"
                         f"{'; and more' if len(rows) > 3 else ''}); the online recall needs finite scores "
                         f">= 0. Nothing was written: fix the index step's ranking and re-run index for {day}")


def expected_counts(served: DataFrame, index: DataFrame) -> tuple[dict[str, int], str]:
    """What Redis must receive (keys and members of each kind) and the model the export
    used: one pass over each table."""
    u = served.agg(F.countDistinct("user_id").alias("keys"), F.count(F.lit(1)).alias("members"),
                   F.max("model_version").alias("model")).first()
    t = index.agg(F.countDistinct("tag").alias("keys"), F.count(F.lit(1)).alias("members")).first()
    return ({"users": u["keys"], "tags": t["keys"], "user_members": u["members"], "tag_members": t["members"]},
            u["model"] or "")


def sorted_sets(served: DataFrame, index: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(key, items) rows: each user's tags by rank, each tag's articles by score."""
    users = (served.groupBy(F.col("user_id").alias("key"))
             .agg(F.collect_list(F.struct("tag", F.col("rank").cast("double"))).alias("items")))
    tags = index.groupBy(F.col("tag").alias("key")).agg(F.collect_list(F.struct("article_id", "score")).alias("items"))
    return users, tags


def run_rollback(config: Config, date: dt.date) -> dict:
    """Make the previous version current again (no Spark)."""
    client, keys, where = connect(config), Keys(config.publish.key_prefix), redact_url(connection(config).url)
    try:
        now, before = rollback(client, keys)
    except redis.RedisError as exc:
        raise RedisUnavailable(f"publish --rollback: Redis at {where} failed: {exc}; nothing was changed "
                               "unless the rollback's transaction completed") from None
    finally:
        client.close()
    log.warning("publish: rolled back %s to %s on %s", before, now, where)
    return {"step": NAME, "date": date.isoformat(), "status": "rolled back", "current": now, "previous": before,
            "redis": where}


def publish_version(spark: SparkSession, config: Config, client, day: str, wh: Warehouse,
                    versions: dict[str, int | None] | None = None) -> dict:
    """Write D's tables as a new version, check the counts, switch, clean up (module docstring)."""
    conn, keys = connection(config), Keys(config.publish.key_prefix)
    at = versions or {}  # Delta: each table read at one version, whatever commits meanwhile
    served = wh.read_partition("user_top_tags", day, version=at.get("user_top_tags"))
    index = wh.read_partition("tag_index", day, version=at.get("tag_index"))
    refuse_unservable_scores(index, day)
    expected, model_version = expected_counts(served, index)
    fallback = global_tags(wh.read_partition("tag_stats", day, version=at.get("tag_stats")), config.export.top_n)
    users, tags = sorted_sets(served, index)
    lock = PublishLock(client, keys, f"publish {day}")
    lock.acquire(LOCK_WAIT_SEC)
    try:
        missing = library_status(client)
        if missing:
            log.warning("publish %s: the online recall will merge in Python, not in Redis: %s", day, missing)
        return _write_and_switch(spark, client, conn, keys, lock, day, (users, tags, fallback),
                                 expected, model_version, config.publish.pipeline_size, config.recall.merge)
    finally:
        lock.release()


def _write_and_switch(spark: SparkSession, client, conn: Connection, keys: Keys, lock: PublishLock, day: str,
                      sets: tuple, expected: dict[str, int], model_version: str, batch: int, merge: str) -> dict:
    """Steps 3-6 of the module docstring, under the lock; ``merge`` (recall.merge) goes into
    the meta hash, so the online recall merges as the day was evaluated."""
    users, tags, fallback = sets
    version = f"{day}@{int(time.time() * 1000)}"
    client.sadd(keys.versions, version)
    log.info("publish %s: writing version %s to %s", day, version, redact_url(conn.url))
    t0 = time.monotonic()
    n_users, user_members = _write_sets(spark, users, conn, keys, version, "user", batch)
    n_tags, tag_members = _write_sets(spark, tags, conn, keys, version, "tag", batch)
    if fallback:
        client.zadd(keys.global_tags(version), {t: float(i + 1) for i, t in enumerate(fallback)})
    write_sec = time.monotonic() - t0
    got = {"users": n_users, "tags": n_tags, "user_members": user_members, "tag_members": tag_members}
    if got != expected:
        delete_version(client, keys, version)
        raise RuntimeError(f"publish {day}: Redis received {got} but the tables hold {expected}; "
                           f"version {version} was deleted and {keys.current} left as it was")
    held = counts_in_redis(client, keys, version, batch)
    want = {**expected, "global_tags": len(fallback), "tag_sums": expected["tags"]}
    if held != want:
        delete_version(client, keys, version)
        raise RuntimeError(f"publish {day}: Redis holds {held} of version {version} but the tables hold {want}; "
                           f"version {version} was deleted and {keys.current} left as it was")
    client.hset(keys.meta(version), mapping={
        "date": day, "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_version": model_version, "global_tags": len(fallback), "merge": merge,
        **{k: str(v) for k, v in got.items()}})
    try:
        old = switch(client, keys, version, lock)
    except PublishLocked:
        delete_version(client, keys, version)
        raise
    # Under the lock no other publish is writing: every other version is complete and old, or
    # was left by a killed publish. (A publish that lost the lock leaves them to the next.)
    stale = sorted(set(client.smembers(keys.versions)) - ({version, old} - {None})) if lock.held() else []
    deleted = {v: delete_version(client, keys, v) for v in stale}
    members = got["user_members"] + got["tag_members"] + len(fallback)
    return {"version": version, "previous": old, "deleted_versions": deleted, "written": got,
            "global_tags": fallback, "model_version": model_version,
            "members_per_sec": round(members / write_sec) if write_sec else None, "write_sec": write_sec,
            "members": members}


def run(spark: SparkSession | None, config: Config, date: dt.date, rollback: bool = False) -> dict:
    if rollback:
        return run_rollback(config, date)
    started = time.monotonic()
    day = date.isoformat()
    where = redact_url(connection(config).url)
    wh, client = Warehouse(spark, config), connect(config)
    # Delta: the versions of the tables read, which publish reads at (a rewrite meanwhile
    # changes nothing served), so that what was served on D can be read back
    # (Warehouse.read_partition(..., version=N), within storage.vacuum_retain_hours).
    sources = {t: wh.table_version(t) for t in ("user_top_tags", "tag_index", "tag_stats")} \
        if config.storage.format == "delta" else {}
    try:
        published = publish_version(spark, config, client, day, wh, sources)
    except redis.exceptions.NoPermissionError as exc:
        raise RedisUnavailable(f"publish {day}: Redis at {where} refused the writer a command ({exc}); give "
                               f"${config.publish.username_env} the writer's rules (`tagrecall redis-acl`). "
                               f"{Keys(config.publish.key_prefix).current} was not changed") from None
    except redis.RedisError as exc:
        raise RedisUnavailable(f"publish {day}: Redis at {where} failed: {str(exc).rstrip('.')}. "
                               f"{Keys(config.publish.key_prefix).current} still names the last complete "
                               "version; re-run the step when Redis is back") from None
    finally:
        client.close()
    write_sec, members = published.pop("write_sec"), published.pop("members")
    report = {"step": NAME, "date": day, "status": "succeeded", "redis": where, **published,
              **({"table_versions": sources} if sources else {}), "seconds": round(time.monotonic() - started, 3), "config": config.to_dict()}
    wh.write_run_report(NAME, day, report)
    log.debug("publish %s: %s is current (%d users, %d tags, %d members in %.1fs); previous %s; deleted %s",
             day, published["version"], published["written"]["users"], published["written"]["tags"], members,
             write_sec, published["previous"], list(published["deleted_versions"]) or "none")
    return report


STEP = Step(NAME, run, skip_reason=skip_reason, spark_unless=("rollback",), summary="publish D's index and top tags to Redis", options=(
    Option("--rollback", "make the previous published version current again (and the current one previous); "
                         "--date is only recorded"),))
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
