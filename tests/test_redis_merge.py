"""The online recall's merge run by Redis (jobs/online/redis_merge.py) against ``merge()`` in
Python, the one definition, on random lists: every merge, ties, k below and above the union,
versions with and without the stored score sums, negative scores; the tie rule under a
locale that collates otherwise; who may run and who may load it; the fallback to Python. A
real redis-server (tests/conftest.py's ``redis_server``), no mocks."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import shutil
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

redis = pytest.importorskip("redis")

from jobs import publish  # noqa: E402
from jobs.online import keys as redis_keys  # noqa: E402
from jobs.online import recall as online  # noqa: E402
from jobs.online import redis_merge  # noqa: E402
from jobs.online.recall import MERGES, merge  # noqa: E402
from tests.conftest import free_port  # noqa: E402

PREFIX = "tagrecall"
KEYS = redis_keys.Keys(PREFIX)
# Tags that need escaping in a key; article ids whose order differs between bytes and a
# locale's collation ("B" < "a" < "ä" < "é" < "z" in code points, not in en_US).
TAG_NAMES = ["t1", "t:2", "t 3", "熊猫", "t%4", "[t5]", "t6", "t7"]
ARTICLE_IDS = ["a", "B", "z", "ä", "é", "a1", "a10", "a2", "b", "Z9"] + [f"x{i:02d}" for i in range(40)]
# Scores that tie, exactly and after rounding to 1e-9 (0.1 + 2e-10 rounds to 0.1), and zeros.
SCORES = st.one_of(st.sampled_from([0.0, 0.1, 0.1 + 2e-10, 0.1 - 4e-10, 0.25, 0.5, 1.0, 1 / 3, 2.0]),
                   st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False))


class _Sum:
    def __init__(self):
        self.value = 0

    def add(self, n):
        self.value += n


def _write(client, url: str, version: str, users: dict, lists: dict, method: str, with_sums: bool,
           global_tags: list[str]) -> None:
    """A version as publish writes it: its partition writer for the sets (and the sums), then
    the global list, the meta and the pointer."""
    conn = redis_keys.Connection(url, None, False, 5.0)
    rows = [{"key": t, "items": items} for t, items in lists.items() if items]
    publish._writer(conn, KEYS, version, "tag", 3, _Sum(), _Sum())(iter(rows))
    users_rows = [{"key": u, "items": [(t, float(r)) for t, r in tags]} for u, tags in users.items() if tags]
    publish._writer(conn, KEYS, version, "user", 3, _Sum(), _Sum())(iter(users_rows))
    if not with_sums:  # a version published before the sums were stored
        client.delete(KEYS.sums(version))
    if global_tags:
        client.zadd(KEYS.global_tags(version), {t: float(i + 1) for i, t in enumerate(global_tags)})
    client.hset(KEYS.meta(version), mapping={"date": "2026-09-01", "merge": method})
    client.set(KEYS.current, version)


@pytest.fixture
def server(redis_server):
    url = redis_server()
    client = redis.Redis.from_url(url, decode_responses=True)
    redis_merge.load_library(client)
    return url, client


def _lists_strategy():
    item = st.tuples(st.sampled_from(ARTICLE_IDS), SCORES)
    return st.dictionaries(st.sampled_from(TAG_NAMES), st.lists(item, max_size=25, unique_by=lambda x: x[0]),
                           max_size=len(TAG_NAMES))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lists=_lists_strategy(),
       user_tags=st.lists(st.sampled_from(TAG_NAMES), unique=True, max_size=6),
       ranks=st.lists(st.integers(min_value=1, max_value=40), unique=True, min_size=6, max_size=6),
       method=st.sampled_from(MERGES), k=st.integers(min_value=0, max_value=60), with_sums=st.booleans())
def test_the_redis_merge_equals_the_python_merge(server, lists, user_tags, ranks, method, k, with_sums):
    url, client = server
    client.flushdb()
    tags = sorted(zip(user_tags, sorted(ranks), strict=False), key=lambda t: t[1])
    _write(client, url, "v@1", {"u:1": tags}, lists, method, with_sums, ["t6", "t1"])
    got = online.recall_in_redis(client, "u:1", k, PREFIX)
    want_source = "user" if tags else "global"
    want_tags = tags if tags else [("t6", 1), ("t1", 2)]
    assert (got.version, got.source, got.merge, got.tags) == ("v@1", want_source, method, want_tags)
    # The reference: merge() on the lists as written (not as read back from Redis).
    assert got.articles == merge(want_tags, lists, k, method)
    assert got.merged_in == "redis"
    assert online.recall_python(client, "u:1", k, PREFIX) == dataclasses.replace(got, merged_in="python")


@pytest.mark.parametrize("method", MERGES)
def test_the_redis_merge_equals_the_python_merge_at_the_index_size(server, method):
    """20 tags of 200 articles from 3,000 (the synthetic feed's index): unions of ~2,000, so
    the function scores a window of the union and widens it; k = 1, 100 and past the union."""
    url, client = server
    rng = random.Random(7)
    lists = {f"tag{i}": [(f"a{j}", round(rng.random(), rng.choice([2, 6, 12])))
                         for j in rng.sample(range(3000), 200)] for i in range(60)}
    users = {f"u{u}": [(f"tag{i}", r) for r, i in enumerate(rng.sample(range(60), 20), 1)] for u in range(8)}
    _write(client, url, "v@2", users, lists, method, True, ["tag1"])
    for user, tags in users.items():
        for k in (1, 100, 5000):
            assert online.recall_in_redis(client, user, k, PREFIX).articles == merge(tags, lists, k, method), (user, k)


def _en_us_env(tmp_path) -> dict[str, str] | None:
    """An environment whose LC_ALL collates by en_US rules ("a" < "B"): the system's locale
    when `locale -a` has it, else one built by localedef into tmp_path (glibc's LOCPATH: no
    root, nothing installed); None when neither is possible."""
    env = {**os.environ, "LC_ALL": "en_US.UTF-8", "LC_COLLATE": "en_US.UTF-8"}
    listed = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.split() \
        if shutil.which("locale") else []
    if {"en_US.utf8", "en_US.UTF-8"} & set(listed):
        return env
    if shutil.which("localedef") is None:
        return None
    built = subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(tmp_path / "en_US.UTF-8")],
                           capture_output=True, text=True)
    return {**env, "LOCPATH": str(tmp_path)} if built.returncode == 0 else None


@pytest.fixture
def en_us_server(tmp_path):
    """A redis-server started with LC_ALL=en_US.UTF-8 (it sets LC_COLLATE from its environment:
    Lua's string < is strcoll there); skips where en_US cannot be had or does not collate."""
    binary, env = shutil.which("redis-server"), _en_us_env(tmp_path)
    if binary is None:
        pytest.skip("redis-server is not installed")
    if env is None:
        pytest.skip("no en_US.UTF-8 locale (locale -a) and localedef could not build one (Debian: the "
                    "`locales` package): the tie rule cannot be checked under a collating locale")
    port = free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        if client.eval('return tostring("a" < "B")', 0) != "true":  # strcoll; "false" in C.UTF-8
            pytest.skip("redis-server did not take en_US's collation from LC_ALL")
        redis_merge.load_library(client)
        yield url, client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_tie_rule_is_score_then_article_id_by_code_point(en_us_server):
    """Equal scores come back by article_id ascending as Python orders str (code points), not
    as a sorted set reversed (ZREVRANGE: descending) nor by the server's locale (en_US here,
    where "a" < "B" < "ä" < "é" < "z")."""
    url, client = en_us_server
    ids = ["é", "b", "B", "a", "ä", "z"]
    _write(client, url, "v@3", {"u": [("t1", 1)]}, {"t1": [(a, 1.0) for a in ids]}, "rank_sum", True, [])
    got = online.recall_in_redis(client, "u", 10, PREFIX)
    assert [a for a, _, _ in got.articles] == ["B", "a", "b", "z", "ä", "é"]
    assert [s for _, s, _ in got.articles] == [1.0] * 6
    # 0.3 + 2e-10 and 0.3 - 3e-10 round to 0.3: tied, so by id; 0.3 + 6e-10 rounds above.
    _write(client, url, "v@4", {"u": [("t1", 1)]},
           {"t1": [("c", 0.3 + 2e-10), ("a", 0.3 - 3e-10), ("b", 0.3), ("d", 0.3 + 6e-10)]}, "rank_sum", True, [])
    got = online.recall_in_redis(client, "u", 10, PREFIX)
    assert [(a, s) for a, s, _ in got.articles] == [("d", 0.300000001), ("a", 0.3), ("b", 0.3), ("c", 0.3)]


@pytest.mark.parametrize("method", MERGES)
def test_ties_wider_than_the_first_window(server, method):
    """60 articles tied after rounding, k = 5: the union (ascending, ties by id) holds the
    smallest ids furthest from its top, so the function must widen its window to reach them."""
    url, client = server
    ids = [f"a{i:02d}" for i in range(60)]
    lists = {"A": [(a, 0.5 + (i % 3) * 1e-10) for i, a in enumerate(ids)], "B": [("a59", 0.1), ("b", 9.0)]}
    tags = [("A", 1), ("B", 2)]
    _write(client, url, "v@8", {"u": tags}, lists, method, True, [])
    for k in (1, 5, 40):
        got = online.recall_in_redis(client, "u", k, PREFIX).articles
        assert got == merge(tags, lists, k, method), k
    if method == "rank_sum":
        assert [a for a, _, _ in got[:4]] == ["b", "a59", "a00", "a01"]


def test_probability_and_via_by_hand(server):
    url, client = server
    w2 = 1 / math.log2(3)
    lists = {"A": [("x", 4.0), ("y", 2.0), ("z", 2.0)], "B": [("y", 3.0), ("w", 1.0)]}
    _write(client, url, "v@5", {"u": [("A", 1), ("B", 2)]}, lists, "probability", True, [])
    got = online.recall_in_redis(client, "u", 4, PREFIX).articles
    assert [(a, via) for a, _, via in got] == [("y", ["A", "B"]), ("x", ["A"]), ("z", ["A"]), ("w", ["B"])]
    assert [s for _, s, _ in got] == pytest.approx([0.25 + 0.75 * w2, 0.5, 0.25, 0.25 * w2], abs=1e-9)
    assert client.hgetall(KEYS.sums("v@5")) == {"A": "8.0", "B": "4.0"}


def test_nothing_published_is_a_lookup_error(server):
    _, client = server
    client.flushdb()
    with pytest.raises(LookupError, match="nothing published"):
        online.recall(client, "u", 5, PREFIX)


def _fcall_ro_calls(client) -> int:
    return client.info("commandstats").get("cmdstat_fcall_ro", {}).get("calls", 0)


def test_without_the_library_the_recall_merges_in_python(server, caplog, monkeypatch):
    """It says so in the answer (merged_in), warns naming what to run, does not try the
    function again for FALLBACK_RETRY_SEC, and warns again later with a count."""
    url, client = server
    lists = {"A": [("x", 4.0), ("y", 2.0)], "B": [("y", 3.0)]}
    _write(client, url, "v@6", {"u": [("A", 1), ("B", 2)]}, lists, "quota", True, [])
    in_redis = online.recall_in_redis(client, "u", 2, PREFIX)
    assert in_redis.merged_in == "redis"
    client.function_delete(redis_merge.LIBRARY)
    with pytest.raises(redis.ResponseError, match="Function not found"):
        online.recall_in_redis(client, "u", 2, PREFIX)
    online.reset_fallbacks()
    monkeypatch.setattr(online, "FALLBACK_RETRY_SEC", 1.0)
    in_python = dataclasses.replace(in_redis, merged_in="python")
    with caplog.at_level("WARNING", logger="jobs.online.recall"):
        before = _fcall_ro_calls(client)
        assert online.recall(client, "u", 2, PREFIX) == in_python
        assert _fcall_ro_calls(client) == before + 1
        assert "merging in Python" in caplog.text and redis_merge.LIBRARY in caplog.text
        assert "tagrecall redis-acl --apply" in caplog.text
        caplog.clear()
        for _ in range(5):  # remembered: no failing FCALL_RO first, and no warning per request
            assert online.recall(client, "u", 2, PREFIX) == in_python
        assert _fcall_ro_calls(client) == before + 1 and not caplog.text
        monkeypatch.setattr(online, "FALLBACK_LOG_SEC", 0.0)
        assert online.recall(client, "u", 2, PREFIX) == in_python
        assert "(6 request(s) in the last" in caplog.text
        # Once loaded, the function answers again after the retry time.
        redis_merge.load_library(client)
        assert online.recall(client, "u", 2, PREFIX) == in_python
        time.sleep(1.0)
        assert online.recall(client, "u", 2, PREFIX) == in_redis
    online.reset_fallbacks()


def test_the_cli_says_where_it_merged(server, tmp_path, capsys):
    from jobs.cli import main

    url, client = server
    _write(client, url, "v@9", {"u": [("A", 1)]}, {"A": [("x", 1.0)]}, "rank_sum", True, [])
    online.reset_fallbacks()
    common = ["--warehouse", str(tmp_path / "wh"), "--set", f"publish.redis_url={url}", "--user", "u"]
    assert main(["recall", *common, "--json"]) == 0
    assert '"merged_in": "redis"' in capsys.readouterr().out
    client.function_delete(redis_merge.LIBRARY)
    assert main(["recall", *common]) == 0
    assert "merged in python" in capsys.readouterr().out
    online.reset_fallbacks()


@pytest.mark.parametrize("missing", ["+zmscore", "+hmget", "+zunion", "+zcard"])
def test_a_reader_without_a_command_the_function_sends_gets_noperm_and_the_python_merge(server, missing):
    """Redis refuses a command mid-function with a plain error; the function checks them first
    and answers NOPERM (NoPermissionError), so recall() merges in Python."""
    url, admin = server
    tags = [("A", 1), ("B", 2)]
    lists = {"A": [("x", 4.0), ("y", 2.0)], "B": [("y", 3.0), ("z", 1.0)]}
    _write(admin, url, "v@10", {"u": tags}, lists, "probability", True, [])
    rules = [r for r in redis_keys.acl_rules(PREFIX, "reader") if r != missing]
    admin.execute_command("ACL", "SETUSER", "tr-partial", *rules, ">p")
    partial = redis.Redis.from_url(url, username="tr-partial", password="p", decode_responses=True)
    name = missing[1:].upper()
    with pytest.raises(redis.exceptions.NoPermissionError, match=f"may not run {name} .*redis-acl --apply"):
        online.recall_in_redis(partial, "u", 5, PREFIX)
    online.reset_fallbacks()
    got = online.recall(partial, "u", 5, PREFIX)
    assert got.merged_in == "python" and got.articles == merge(tags, lists, 5, "probability")
    online.reset_fallbacks()


def test_the_reader_runs_the_function_and_cannot_write_or_load_it(server):
    url, admin = server
    _write(admin, url, "v@7", {"u": [("A", 1)]}, {"A": [("x", 1.0), ("y", 2.0)]}, "probability", True, [])
    redis_keys.apply_acl(admin, PREFIX, {"writer": ("tr-writer", "w"), "reader": ("tr-reader", "r")})
    reader = redis.Redis.from_url(url, username="tr-reader", password="r", decode_responses=True)
    got = online.recall_in_redis(reader, "u", 5, PREFIX)
    assert [(a, s) for a, s, _ in got.articles] == [("y", pytest.approx(2 / 3)), ("x", pytest.approx(1 / 3))]
    for call in (lambda: reader.zadd(KEYS.user("v@7", "u"), {"injected": 1.0}),
                 lambda: reader.set(KEYS.current, "v@0"),
                 lambda: redis_merge.load_library(reader),
                 lambda: reader.function_delete(redis_merge.LIBRARY),
                 lambda: reader.fcall(redis_merge.FUNCTION, 1, KEYS.current, PREFIX, "u", 5),  # not read-only
                 lambda: reader.fcall_ro(redis_merge.FUNCTION, 1, "other:current", "other", "u", 5)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    # A reader with the rules of the release before (no FCALL_RO) still gets the answer, in Python.
    rules = [r for r in redis_keys.acl_rules(PREFIX, "reader") if r not in ("+fcall_ro", "+hmget", "+zunion",
                                                                            "+zmscore", "+zcard")]
    admin.execute_command("ACL", "SETUSER", "tr-old", *rules, ">o")
    old = redis.Redis.from_url(url, username="tr-old", password="o", decode_responses=True)
    with pytest.raises(redis.exceptions.NoPermissionError):
        online.recall_in_redis(old, "u", 5, PREFIX)
    online.reset_fallbacks()
    assert online.recall(old, "u", 5, PREFIX) == dataclasses.replace(got, merged_in="python")
    online.reset_fallbacks()


OTHER_LIBRARY = "#!lua name=billing\nredis.register_function('billing_total', function(k, a) return redis.call('GET', k[1]) end)"
HIJACK = ("#!lua name=billing\nredis.register_function('billing_total', function(k, a) "
          "redis.call('SET', k[1], '0') return redis.call('GET', k[1]) end)")


def test_the_writer_cannot_load_or_replace_a_library_and_the_administrator_loads_ours(server):
    """FUNCTION LOAD has no key scope: a writer allowed it could replace another application's
    library and write outside the prefix through it. The writer only probes for ours."""
    url, admin = server
    admin.function_flush()
    admin.function_load(OTHER_LIBRARY)
    admin.set("billing:total", "100")
    redis_keys.apply_acl(admin, PREFIX, {"writer": ("tr-writer", "w"), "reader": ("tr-reader", "r")})
    writer = redis.Redis.from_url(url, username="tr-writer", password="w", decode_responses=True)
    for call in (lambda: writer.function_load(HIJACK, replace=True),
                 lambda: redis_merge.load_library(writer),
                 lambda: writer.function_delete("billing"),
                 lambda: writer.function_flush(),
                 lambda: writer.function_restore(admin.function_dump(), "REPLACE"),
                 lambda: writer.fcall("billing_total", 1, "billing:total"),
                 lambda: writer.fcall_ro("billing_total", 1, "billing:total")):  # outside the prefix
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert admin.fcall("billing_total", 1, "billing:total") == "100"
    assert not [r for r in redis_keys.acl_rules(PREFIX, "writer") if "function" in r or r in ("+@all", "+eval")]
    # Without our library the writer's probe says what to run; the administrator loads it.
    assert "tagrecall redis-acl --apply" in redis_merge.library_status(writer)
    redis_merge.load_library(admin)
    assert redis_merge.library_status(writer) is None
    # A library of the same name but another build is named as such.
    admin.function_load(redis_merge.library_source().replace("local MASK_BITS", "local UNUSED = 1\nlocal MASK_BITS")
                        .replace(redis_merge.source_id(), "0123456789abcdef"), replace=True)
    assert "another build (0123456789abcdef" in redis_merge.library_status(writer)
    admin.function_delete(redis_merge.LIBRARY)


# sha256(library_source()) of each VERSION: a change to the library's source must bump
# redis_merge.VERSION (readers of the release before keep calling theirs) and add a line here.
LIBRARY_SHA256 = {
    1: "bc7d8f196ecce57f6905e1b947a57f58c3ab952a9892206c227187e7deb7811b",
}


def test_the_library_source_is_pinned_to_its_version():
    got = hashlib.sha256(redis_merge.library_source().encode()).hexdigest()
    assert redis_merge.VERSION in LIBRARY_SHA256, (
        f"redis_merge.VERSION {redis_merge.VERSION} is new: add it to LIBRARY_SHA256 as {got!r}")
    assert got == LIBRARY_SHA256[redis_merge.VERSION], (
        f"library_source() changed (sha256 {got}) but redis_merge.VERSION is still {redis_merge.VERSION}: "
        "bump VERSION (a new library name, so readers of the release before keep theirs) and add its hash here")


# Negative and large-magnitude scores whose ZUNION sums cancel far from merge()'s: publish
# refuses them, the function must still answer exactly.
NEGATIVE_SCORES = st.one_of(st.sampled_from([-1.0, 1.0, 0.0, -0.5, 1e8, -1e8, 0.1, -0.1 - 2e-10]),
                            st.floats(min_value=-1e8, max_value=1e8, allow_nan=False, allow_infinity=False))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lists=st.dictionaries(st.sampled_from(TAG_NAMES), st.lists(st.tuples(st.sampled_from(ARTICLE_IDS), NEGATIVE_SCORES),
                                                                  max_size=25, unique_by=lambda x: x[0]),
                             max_size=len(TAG_NAMES)),
       user_tags=st.lists(st.sampled_from(TAG_NAMES), unique=True, min_size=1, max_size=6),
       method=st.sampled_from(MERGES), k=st.integers(min_value=1, max_value=30), with_sums=st.booleans())
def test_the_redis_merge_equals_the_python_merge_with_negative_scores(server, lists, user_tags, method, k,
                                                                      with_sums):
    url, client = server
    client.flushdb()
    tags = [(t, r) for r, t in enumerate(user_tags, 1)]
    _write(client, url, "v@11", {"u": tags}, lists, method, with_sums, [])
    assert online.recall_in_redis(client, "u", k, PREFIX).articles == merge(tags, lists, k, method)


def test_a_cancelling_sum_with_negative_scores(server):
    """x's terms nearly cancel: ZUNION (smallest set first) sums them 1.4e-8 below merge()'s
    rank order, which put x under y and w, out of the window the bound for scores >= 0 picks."""
    url, client = server
    w4 = redis_merge.rank_weight(4)
    lists = {"A": [("x", 183646145.12743887), ("f1", 1.0), ("f2", 1.0)], "B": [("x", -291072239.6631362), ("f3", 1.0)],
             "C": [("x", 0.2781362810883239)]}
    tags = [("A", 1), ("B", 2), ("C", 3), ("D", 4)]
    x = merge(tags[:3], lists, 1, "rank_sum")[0][1]
    assert x == 8.824352278
    lists["D"] = [("y", (x - 3.4e-9) / w4), ("w", (x - 8.2e-9) / w4)] + [(f"g{i}", 0.001) for i in range(5)]
    for method in MERGES:
        _write(client, url, "v@12", {"u": tags}, lists, method, True, [])
        for k in (1, 2, 3):
            got = online.recall_in_redis(client, "u", k, PREFIX).articles
            assert got == merge(tags, lists, k, method), (method, k)
