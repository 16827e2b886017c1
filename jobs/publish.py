"""Publish step: D's ``tag_index`` and ``user_top_tags`` -> Redis, switched in atomically.

1. PING the server first (nothing is read or written when it is down).
2. Name a new version ``D@<epoch ms>`` and add it to ``p:versions`` before writing, so a
   publish killed half-way leaves keys that the next publish finds and deletes.
3. Write every user's tags and every tag's articles as sorted sets from the Spark
   executors (foreachPartition, one connection per partition, ``publish.pipeline_size``
   commands per round trip), then the global list for users without tags; count the keys
   and members Redis accepted and compare them with the tables. Nothing is switched on a
   mismatch. Members are counted as sent once their pipeline succeeded, not by ZADD's
   reply (the number *added*), so a retried Spark task that rewrites members already
   there counts them again instead of zero.
4. Write the version's meta hash, then in one MULTI/EXEC (under WATCH, so two publishers
   cannot interleave) set ``p:current`` to the new version and ``p:previous`` to the old.
5. Delete every other version (meta hash first, so a reader that still holds its name
   notices and re-reads the pointer).

``--rollback`` swaps ``p:current`` and ``p:previous`` in one transaction (run it again to
undo). Sorted sets because a reader needs a user's tags in rank order and a tag's articles
with their scores, in one command each. The key layout is in jobs/online/keys.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

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
from jobs.transforms.tag_lists import global_tags
from schemas.config import Config, redact_url

log = logging.getLogger(__name__)

NAME = "publish"


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


def switch(client, keys: Keys, version: str) -> str | None:
    """Make ``version`` current and the old current previous, atomically; returns the old one."""
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.current)
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


def skip_reason(_spark, config: Config, _date: dt.date) -> str | None:
    return None if redis_url(config) else NOT_CONFIGURED


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


def publish_version(spark: SparkSession, config: Config, client, day: str, wh: Warehouse) -> dict:
    """Write D's tables as a new version, check the counts, switch, clean up (module docstring)."""
    conn, keys = connection(config), Keys(config.publish.key_prefix)
    served, index = wh.read_partition("user_top_tags", day), wh.read_partition("tag_index", day)
    expected, model_version = expected_counts(served, index)
    fallback = global_tags(wh.read_partition("tag_stats", day), config.export.top_n)
    users, tags = sorted_sets(served, index)

    version = f"{day}@{int(time.time() * 1000)}"
    client.sadd(keys.versions, version)
    batch = config.publish.pipeline_size
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
    client.hset(keys.meta(version), mapping={
        "date": day, "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_version": model_version, "global_tags": len(fallback), **{k: str(v) for k, v in got.items()}})
    old = switch(client, keys, version)
    stale = sorted(set(client.smembers(keys.versions)) - ({version, old} - {None}))
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
    try:
        published = publish_version(spark, config, client, day, wh)
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
              "seconds": round(time.monotonic() - started, 3), "config": config.to_dict()}
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
