"""Publish to a real redis-server (started by the tests on loopback), and recall from it."""

from __future__ import annotations

import hashlib
import math
import threading
from pathlib import Path

import pandas as pd
import pytest

from schemas.config import load_config

redis = pytest.importorskip("redis")

from jobs import publish  # noqa: E402
from jobs.online import keys as redis_keys  # noqa: E402
from jobs.online import recall  # noqa: E402
from jobs.online.redis_merge import load_library  # noqa: E402


def _config(base: Path, url: str, **publish_settings):
    # _expected_recall computes the rank_sum merge by hand; one test publishes another.
    return load_config(overrides={"storage": {"warehouse": str(base / "warehouse")},
                                  "publish": {"redis_url": url, **publish_settings}, "recall": {"merge": "rank_sum"}})


def _pd(base: Path, name: str, day: str) -> pd.DataFrame:
    return pd.read_parquet(base / "warehouse" / name / f"dt={day}")


def _expected_tags(base: Path, day: str) -> dict[str, list[tuple[str, int]]]:
    top = _pd(base, "user_top_tags", day).sort_values(["user_id", "rank"])
    return {u: list(zip(g.tag, g["rank"].astype(int), strict=True)) for u, g in top.groupby("user_id")}


def _expected_recall(base: Path, day: str, tags: list[tuple[str, int]], k: int) -> list[str]:
    """The README's merge, computed here from the tables: sum over the user's tags of
    score(tag, article) / log2(1 + rank), best first, ties by article_id."""
    index = _pd(base, "tag_index", day)
    total: dict[str, float] = {}
    for tag, rank in tags:
        for article, score in index[index.tag == tag][["article_id", "score"]].itertuples(index=False):
            total[article] = total.get(article, 0.0) + score / math.log2(1 + rank)
    return sorted(total, key=lambda a: (-round(total[a], 9), a))[:k]


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "_runs" not in p.parts}


def test_publish_loads_every_row_and_recall_merges_as_documented(spark, exported_feed, redis_server):
    _, base, dates = exported_feed
    day = dates[-1].isoformat()
    config = _config(base, redis_server())
    report = publish.run(spark, config, dates[-1])
    client = redis_keys.connect(config)
    load_library(client)  # the administrator's step (tagrecall redis-acl --apply); the tests' default user
    keys = redis_keys.Keys(config.publish.key_prefix)
    version = client.get(keys.current)
    assert version == report["version"] and version.startswith(day + "@")

    expected = _expected_tags(base, day)
    assert report["written"]["users"] == len(expected)
    for user in list(expected)[:50]:
        got = [(t, int(r)) for t, r in client.zrange(keys.user(version, user), 0, -1, withscores=True)]
        assert got == expected[user]
    index = _pd(base, "tag_index", day)
    for tag, group in list(index.groupby("tag"))[:20]:
        stored = dict(client.zrange(keys.tag(version, tag), 0, -1, withscores=True))
        assert stored == pytest.approx(dict(zip(group.article_id, group.score, strict=True)), rel=1e-12)

    # The recall of a user with tags, merged by the documented score.
    user = max(expected, key=lambda u: len(expected[u]))
    got = recall.recall(client, user, k=30, prefix=config.publish.key_prefix)
    assert got.source == "user" and got.tags == expected[user] and got.merged_in == "redis"
    assert [a for a, _, _ in got.articles] == _expected_recall(base, day, expected[user], 30)
    # A user the export never saw gets the global list: the most clicked tags of tag_stats.
    stats = _pd(base, "tag_stats", day).sort_values(["clicks", "tag"], ascending=[False, True])
    stranger = recall.recall(client, "no-such-user", k=10, prefix=config.publish.key_prefix)
    assert stranger.source == "global"
    assert [t for t, _ in stranger.tags] == list(stats.tag[:config.export.top_n])


def test_spark_evaluation_recalls_what_the_online_recall_returns(spark, exported_feed, redis_server):
    """evaluate's recall hits, user by user, equal the online recall from Redis: each user
    is its own "method", and clicks half the index's articles (a different half per user)."""
    from pyspark.sql import functions as F

    from jobs import evaluate
    from jobs.common.storage import Warehouse

    _, base, dates = exported_feed
    day = dates[-1].isoformat()
    config = _config(base, redis_server())
    publish.run(spark, config, dates[-1])
    client = redis_keys.connect(config)
    load_library(client)
    wh = Warehouse(spark, config)
    users = sorted(_expected_tags(base, day))[:40]
    articles = sorted(pd.read_parquet(base / "warehouse" / "tag_index" / f"dt={day}").article_id.unique())
    clicked = {u: set(articles[i % 2::2]) for i, u in enumerate(users)}
    expected = {}
    for user in users:
        online = recall.recall(client, user, k=50, prefix=config.publish.key_prefix)
        assert online.source == "user" and len(online.articles) == 50
        expected[user] = sum(a in clicked[user] for a, _, _ in online.articles)
    assert len(set(expected.values())) > 1, "the users' hits must differ for this test to mean anything"
    lists = (wh.read_partition("user_top_tags", day).where(F.col("user_id").isin(users))
             .select(F.col("user_id").alias("method"), "user_id", "tag", "rank"))
    clicks = spark.createDataFrame([(u, a) for u in users for a in sorted(clicked[u])], "user_id string, article_id string")
    got = evaluate.recall_hits(lists, clicks, evaluate.index_of(wh.read_partition("tag_index", day)), 50, users,
                               config.recall.merge)
    assert {u: sum(by_group.values()) for u, by_group in got.items()} == expected


def test_readers_see_one_whole_version_during_the_switch_and_rollback_restores(spark, exported_feed, redis_server):
    _, base, dates = exported_feed
    day_a, day_b = dates[-2].isoformat(), dates[-1].isoformat()
    config = _config(base, redis_server(), pipeline_size=7)  # many round trips: a long write
    expected = {day_a: _expected_tags(base, day_a), day_b: _expected_tags(base, day_b)}
    users = sorted(set(expected[day_a]) & set(expected[day_b]))
    users = [u for u in users if expected[day_a][u] != expected[day_b][u]][:25]
    assert len(users) >= 10, "the two days must differ for this test to mean anything"
    publish.run(spark, config, dates[-2])

    seen: list[tuple[str, str, list]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader():
        client = redis_keys.connect(config)
        try:
            while not stop.is_set():
                for u in users:
                    r = recall.recall(client, u, k=5, prefix=config.publish.key_prefix)
                    seen.append((r.date, u, r.tags))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        publish.run(spark, config, dates[-1])
        while not any(d == day_b for d, _, _ in seen[-len(users):]) and not errors:
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert {d for d, _, _ in seen} == {day_a, day_b}
    mixed = [(d, u) for d, u, tags in seen if tags != expected[d][u]]
    assert not mixed, f"{len(mixed)} reads mixed two versions, e.g. {mixed[:3]}"

    client = redis_keys.connect(config)
    keys = redis_keys.Keys(config.publish.key_prefix)
    u = users[0]
    back = publish.run(spark, config, dates[-1], rollback=True)
    assert back["current"].startswith(day_a)
    assert recall.recall(client, u, prefix=config.publish.key_prefix).tags == expected[day_a][u]
    publish.run(spark, config, dates[-1], rollback=True)  # and forward again
    assert recall.recall(client, u, prefix=config.publish.key_prefix).tags == expected[day_b][u]
    # A third publish keeps one version back and deletes the rest, keys included.
    oldest = client.get(keys.previous)
    third = publish.run(spark, config, dates[-1])
    assert oldest in third["deleted_versions"]
    assert not list(client.scan_iter(match=keys.version_pattern(oldest)))
    assert set(client.smembers(keys.versions)) == {third["version"], third["previous"]}


def test_a_publish_that_died_half_way_is_never_current_and_is_cleaned_up(spark, exported_feed, redis_server):
    _, base, dates = exported_feed
    config = _config(base, redis_server())
    first = publish.run(spark, config, dates[-2])
    client = redis_keys.connect(config)
    keys = redis_keys.Keys(config.publish.key_prefix)
    # What a publish killed during its writes leaves behind: a registered version with some
    # keys, no meta, and the pointer untouched.
    dead = f"{dates[-1]}@1"
    client.sadd(keys.versions, dead)
    client.zadd(keys.user(dead, "u0000001"), {"t001": 1.0})
    assert client.get(keys.current) == first["version"]
    second = publish.run(spark, config, dates[-1])
    assert dead in second["deleted_versions"]
    assert not list(client.scan_iter(match=keys.version_pattern(dead)))
    assert client.get(keys.current) == second["version"]


def _assert_whole(client, config, expected: dict, version: str, users: int = 25) -> None:
    """Every user of ``version``'s day (the first ``users``) gets their own tags from it."""
    keys = redis_keys.Keys(config.publish.key_prefix)
    day = client.hgetall(keys.meta(version))["date"]
    for user in sorted(expected[day])[:users]:
        got = [(t, int(r)) for t, r in client.zrange(keys.user(version, user), 0, -1, withscores=True)]
        assert got == expected[day][user], f"version {version} ({day}) holds {got} for {user}"


def test_overlapping_publishes_of_two_days_never_delete_or_switch_to_an_unfinished_version(
        spark, exported_feed, redis_server, monkeypatch):
    """A manual `publish --date A` and the scheduled publish of day B overlap (the step lock
    is per day): B, started while A is half-written, must neither delete A's keys nor let
    A switch to a version missing them. And keys gone from Redis before the switch (a
    publish that lost its lock, an eviction) stop the switch: the counts are Redis's own."""
    _, base, dates = exported_feed
    day_a, day_b = dates[-2], dates[-1]
    config = _config(base, redis_server())
    expected = {d.isoformat(): _expected_tags(base, d.isoformat()) for d in (day_a, day_b)}
    monkeypatch.setattr(publish, "LOCK_WAIT_SEC", 1.0, raising=False)  # B gives up soon instead of waiting
    publish.run(spark, config, day_b)  # what is live before
    client = redis_keys.connect(config)
    keys = redis_keys.Keys(config.publish.key_prefix)
    write_sets, overlapped = publish._write_sets, []

    def users_then(action):
        def write(spark_, df, conn, keys_, version, kind, batch):
            written = write_sets(spark_, df, conn, keys_, version, kind, batch)
            if kind == "user" and not overlapped:
                overlapped.append(None)  # once: the action may publish, and so come back here
                overlapped[0] = action(version)
            return written
        return write

    def publish_b(_version):
        try:
            return publish.run(spark, config, day_b)
        except RuntimeError as exc:  # refused while A holds the lock
            return exc

    monkeypatch.setattr(publish, "_write_sets", users_then(publish_b))
    a = publish.run(spark, config, day_a)
    monkeypatch.setattr(publish, "_write_sets", write_sets)
    current = client.get(keys.current)
    _assert_whole(client, config, expected, current)
    assert current == a["version"] and "already publishing" in str(overlapped[0])
    b = publish.run(spark, config, day_b)  # B re-run once A is done: both whole, B live, A kept back
    _assert_whole(client, config, expected, b["version"])
    _assert_whole(client, config, expected, client.get(keys.previous))

    # Keys missing in Redis when the counts are checked: no switch, the version deleted.
    overlapped.clear()
    lost = {}

    def lose_a_key(version):
        lost["version"], lost["key"] = version, next(client.scan_iter(match=f"{keys.prefix}:v:{version}:user:*"))
        return client.unlink(lost["key"])

    monkeypatch.setattr(publish, "_write_sets", users_then(lose_a_key))
    with pytest.raises(RuntimeError, match="Redis holds"):
        publish.run(spark, config, day_a)
    assert client.get(keys.current) == b["version"]
    assert not list(client.scan_iter(match=keys.version_pattern(lost["version"])))


def test_redis_down_is_a_clear_error_and_the_tables_stay_intact(spark, exported_feed, tmp_path):
    import socket

    _, base, dates = exported_feed
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(base, f"redis://:topsecret@127.0.0.1:{port}/0")
    before = _files(base / "warehouse")
    with pytest.raises(redis_keys.RedisUnavailable) as err:
        publish.run(spark, config, dates[-1])
    message = str(err.value)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in message
    assert "topsecret" not in message
    assert _files(base / "warehouse") == before


def test_password_from_the_environment_never_reaches_reports_or_logs(spark, exported_feed, redis_server,
                                                                    monkeypatch, caplog):
    _, base, dates = exported_feed
    secret = "pw-Zq81-never-print"
    url = redis_server(password=secret)
    monkeypatch.setenv("TAGRECALL_REDIS_PASSWORD", "bad-Pw-77")
    with pytest.raises(redis_keys.RedisUnavailable, match="refused the writer's credentials") as err:
        publish.run(spark, _config(base, url), dates[-1])
    assert "bad-Pw-77" not in str(err.value)
    monkeypatch.setenv("TAGRECALL_REDIS_PASSWORD", secret)
    caplog.set_level("DEBUG")
    report = publish.run(spark, _config(base, url), dates[-1])
    assert report["status"] == "succeeded"
    written = (base / "warehouse" / "_runs" / "publish" / f"{dates[-1]}.json").read_text()
    assert secret not in written and secret not in caplog.text and secret not in repr(redis_keys.connection(
        _config(base, url)))
    # A password given in the URL is redacted in the report too.
    with_url = _config(base, url.replace("redis://", f"redis://:{secret}@"))
    publish.run(spark, with_url, dates[-1])
    written = (base / "warehouse" / "_runs" / "publish" / f"{dates[-1]}.json").read_text()
    assert secret not in written and "redis://:***@127.0.0.1" in written


def test_recall_before_anything_is_published_says_what_to_do(redis_server, tmp_path):
    config = _config(tmp_path, redis_server())
    with pytest.raises(LookupError, match="tagrecall publish --date D"):
        recall.recall(redis_keys.connect(config), "u1", prefix=config.publish.key_prefix)


class _Counter:
    """Stands in for a Spark accumulator (add only)."""

    def __init__(self):
        self.value = 0

    def add(self, n):
        self.value += n


def test_a_retried_task_counts_the_members_it_rewrote(redis_server, tmp_path):
    # A Spark task that is retried writes members that are already there; ZADD then reports
    # 0 added, which must not read as 'nothing written'.
    config = _config(tmp_path, redis_server())
    conn, keys = redis_keys.connection(config), redis_keys.Keys("p")
    rows = [{"key": "u1", "items": [("t1", 1.0), ("t2", 2.0)]}, {"key": "u2", "items": [("t3", 1.0)]}]
    for _attempt in range(2):
        written, members = _Counter(), _Counter()
        publish._writer(conn, keys, "v1", "user", 1, written, members)(iter(rows))
        assert (written.value, members.value) == (2, 3)
    client = redis_keys.connect(config)
    assert client.zrange(keys.user("v1", "u1"), 0, -1) == ["t1", "t2"]


def test_what_redis_must_receive_is_counted_from_the_tables(spark):
    from pyspark.testing import assertDataFrameEqual

    served = spark.createDataFrame([("u1", 1, "t1", "m7"), ("u1", 2, "t2", "m7"), ("u2", 1, "t1", "m7")],
                                   "user_id string, rank int, tag string, model_version string")
    index = spark.createDataFrame([("t1", "a1", 0.9), ("t1", "a2", 0.5), ("t2", "a1", 0.3)],
                                  "tag string, article_id string, score double")
    expected, model = publish.expected_counts(served, index)
    assert expected == {"users": 2, "tags": 2, "user_members": 3, "tag_members": 3} and model == "m7"
    users, tags = publish.sorted_sets(served, index)
    sort = ["key"]
    assertDataFrameEqual(users.selectExpr("key", "array_sort(items) as items").orderBy(*sort),
                         [("u1", [("t1", 1.0), ("t2", 2.0)]), ("u2", [("t1", 1.0)])])
    assertDataFrameEqual(tags.selectExpr("key", "array_sort(items) as items").orderBy(*sort),
                         [("t1", [("a1", 0.9), ("a2", 0.5)]), ("t2", [("a1", 0.3)])])


def test_the_online_recall_merges_as_the_published_version_was_configured(spark, exported_feed, redis_server):
    """recall.merge travels with the version (its meta), so the service merges as the day was
    evaluated: published under "probability", a user's recall is p(tag | user) x p(article |
    tag) summed, computed here from the tables."""
    import dataclasses

    _, base, dates = exported_feed
    day = dates[-1].isoformat()
    config = _config(base, redis_server())
    config = config.replace(recall=dataclasses.replace(config.recall, merge="probability"))
    publish.run(spark, config, dates[-1])
    client = redis_keys.connect(config)
    load_library(client)
    user, tags = sorted(_expected_tags(base, day).items())[0]
    got = recall.recall(client, user, k=30, prefix=config.publish.key_prefix)
    assert got.merged_in == "redis"
    index = _pd(base, "tag_index", day)
    total: dict[str, float] = {}
    for tag, rank in tags:
        rows = index[index.tag == tag]
        for article, score in zip(rows.article_id, rows.score / rows.score.sum(), strict=True):
            total[article] = total.get(article, 0.0) + score / math.log2(1 + rank)
    expected = sorted(total, key=lambda a: (-round(total[a], 9), a))[:30]
    assert got.merge == "probability"
    assert [a for a, _, _ in got.articles] == expected
    assert expected != _expected_recall(base, day, tags, 30), "the two merges must differ for this test to mean anything"


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), float("-inf")])
def test_publish_refuses_scores_the_online_recall_cannot_merge_exactly(spark, bad):
    """The merge in Redis bounds its window on scores >= 0 (and ZADD holds no NaN): publish
    stops before writing, naming the tag and the article."""
    from schemas.tables import TAG_INDEX

    index = spark.createDataFrame([("t1", 1, "a1", 0.5, 1.0, 1.0, 1.0), ("t:2", 1, "a:9", bad, 1.0, 1.0, 1.0),
                                   ("t3", 1, "a3", 0.0, 1.0, 1.0, 1.0)], TAG_INDEX)
    with pytest.raises(ValueError, match=r"tag_index holds scores that are negative or not finite "
                                         r"\(tag 't:2', article 'a:9': .*re-run index for 2026-09-01"):
        publish.refuse_unservable_scores(index, "2026-09-01")
    publish.refuse_unservable_scores(index.filter("tag != 't:2'"), "2026-09-01")  # 0 and up pass
