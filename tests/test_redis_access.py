"""Access to the published data, against a real redis-server: keys escaped from any id, the
writer and reader ACL users with no more than they need, and TLS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import string
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import load_config

redis = pytest.importorskip("redis")

from jobs import publish  # noqa: E402
from jobs.online import keys as redis_keys  # noqa: E402
from jobs.online import recall as online  # noqa: E402
from jobs.online import redis_merge  # noqa: E402
from jobs.online.recall import recall  # noqa: E402

SAFE = set(string.ascii_letters + string.digits + "-._~@%")
DAY = "2026-09-01"
# Ids that a naive key layout would let collide or break: separators, whitespace, glob
# characters, escapes that look like our own, non-ASCII.
USERS = ["u:1", "u", "u 1", "u\n1", "ü1", "u%3A1", "*", "u:1:tag:t", "用户"]
TAGS = ["t:a", "t", "t a", "t\n", "熊猫", "t*", "t%20a", "[t]"]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_escaped_segments_are_one_per_id_and_hold_no_separator(a, b):
    ea, eb = redis_keys.escape(a), redis_keys.escape(b)
    assert set(ea) <= SAFE
    assert urllib.parse.unquote(ea) == a  # decodable, hence one key per id
    assert (ea == eb) == (a == b)


def _day(spark, base: Path, url: str):
    """A hand-made day: user i gets two tags of TAGS, tag j indexes two articles of its own."""
    from tests.conftest import put_partition

    config = load_config(overrides={"storage": {"warehouse": str(base / "warehouse")},
                                    "publish": {"redis_url": url}})
    tags_of = {u: [TAGS[i % len(TAGS)], TAGS[(i + 3) % len(TAGS)]] for i, u in enumerate(USERS)}
    put_partition(spark, config, "user_top_tags", DAY, [
        (u, r, t, None, None, 1.0 / r, "m1") for u, ts in tags_of.items() for r, t in enumerate(ts, 1)])
    put_partition(spark, config, "tag_index", DAY, [
        (t, r, f"a{j}-{r}", 1.0 / (j + r), 1.0, 1.0, 1.0) for j, t in enumerate(TAGS) for r in (1, 2)])
    put_partition(spark, config, "tag_stats", DAY, [(t, 10.0, float(j), 0.1, None, 2) for j, t in enumerate(TAGS)])
    articles = {t: {f"a{j}-1", f"a{j}-2"} for j, t in enumerate(TAGS)}
    return config, tags_of, articles


def _check_recall(client, config, tags_of, articles):
    for user, tags in tags_of.items():
        got = recall(client, user, prefix=config.publish.key_prefix)
        assert got.source == "user" and [t for t, _ in got.tags] == tags, user
        assert {a for a, _, _ in got.articles} == articles[tags[0]] | articles[tags[1]], user


def test_ids_with_separators_whitespace_and_non_ascii_get_their_own_keys(spark, tmp_path, redis_server):
    config, tags_of, articles = _day(spark, tmp_path, redis_server())
    report = publish.run(spark, config, dt.date.fromisoformat(DAY))
    assert report["written"] == {"users": len(USERS), "tags": len(TAGS), "user_members": 2 * len(USERS),
                                 "tag_members": 2 * len(TAGS)}
    client = redis_keys.connect(config)
    _check_recall(client, config, tags_of, articles)
    names = client.keys("*")
    assert not [k for k in names if set(k) - SAFE - {":"}], "a key holds a character that was not escaped"
    assert recall(client, "never-seen", prefix=config.publish.key_prefix).source == "global"


def _acl_users(monkeypatch, url: str) -> None:
    admin = redis.Redis.from_url(url, decode_responses=True)
    redis_keys.apply_acl(admin, "tagrecall", {"writer": ("tr-writer", "w-secret"), "reader": ("tr-reader", "r-secret")})
    admin.set("other:secret", "not for tagrecall")
    admin.close()
    for name, value in {"TAGRECALL_REDIS_USER": "tr-writer", "TAGRECALL_REDIS_PASSWORD": "w-secret",
                        "TAGRECALL_REDIS_READER_USER": "tr-reader",
                        "TAGRECALL_REDIS_READER_PASSWORD": "r-secret"}.items():
        monkeypatch.setenv(name, value)


def test_publish_as_the_writer_and_recall_as_the_reader_with_no_more_than_they_need(
        spark, tmp_path, redis_server, monkeypatch, caplog):
    url = redis_server()  # the default user administers
    config, tags_of, articles = _day(spark, tmp_path, url)
    _acl_users(monkeypatch, url)  # the users only: the recall's library is not loaded
    day = dt.date.fromisoformat(DAY)
    with caplog.at_level("WARNING", logger="jobs.publish"):
        first = publish.run(spark, config, day)  # warns, naming what loads the library, and publishes
    assert first["status"] == "succeeded"
    assert "merge in Python" in caplog.text and "tagrecall redis-acl --apply" in caplog.text
    online.reset_fallbacks()
    reader = redis_keys.connect(config, "reader")
    assert recall(reader, USERS[0], prefix="tagrecall").merged_in == "python"
    online.reset_fallbacks()
    redis_merge.load_library(redis.Redis.from_url(url))  # what `tagrecall redis-acl --apply` does
    assert recall(reader, USERS[0], prefix="tagrecall").merged_in == "redis"
    second = publish.run(spark, config, day)  # the writer also deletes old versions...
    assert publish.run(spark, config, day, rollback=True)["current"] == first["version"]  # ...and rolls back
    writer, reader = redis_keys.connect(config), redis_keys.connect(config, "reader")
    _check_recall(reader, config, tags_of, articles)
    keys = redis_keys.Keys("tagrecall")
    denied = [
        lambda: reader.zadd(keys.user(first["version"], "u"), {"injected": 1.0}),  # no writing...
        lambda: reader.set(keys.current, second["version"]),
        lambda: reader.delete(keys.meta(first["version"])),
        lambda: reader.get("other:secret"),  # ...and nothing outside the prefix
        lambda: reader.keys("*"),
        lambda: writer.get("other:secret"),
        lambda: writer.set("other:x", "1"),
        lambda: writer.flushall(),
        lambda: writer.config_get("*"),
        lambda: writer.execute_command("ACL", "LIST"),
    ]
    for i, call in enumerate(denied):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
            pytest.fail(f"call {i} was allowed")
    # Publishing with the reader's credentials fails with what to do, and switches nothing.
    monkeypatch.setenv("TAGRECALL_REDIS_USER", "tr-reader")
    monkeypatch.setenv("TAGRECALL_REDIS_PASSWORD", "r-secret")
    with pytest.raises(redis_keys.RedisUnavailable, match="refused the writer a command.*redis-acl"):
        publish.run(spark, config, day)
    assert reader.get(keys.current) == first["version"]


def test_the_acl_command_prints_hashed_rules_and_applies_them(redis_server, tmp_path, monkeypatch, capsys):
    from jobs.cli import main

    url = redis_server()
    monkeypatch.setenv("TAGRECALL_REDIS_PASSWORD", "w-secret")
    monkeypatch.delenv("TAGRECALL_REDIS_READER_PASSWORD", raising=False)
    common = ["--warehouse", str(tmp_path / "wh"), "--set", f"publish.redis_url={url}"]
    assert main(["redis-acl", *common]) == 2  # the reader's password is missing: said, nothing done
    monkeypatch.setenv("TAGRECALL_REDIS_READER_PASSWORD", "r-secret")
    capsys.readouterr()
    assert main(["redis-acl", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("secret" not in line for line in lines)
    assert lines[1].startswith("user tagrecall-reader reset on %R~tagrecall:* ") and "+zrange" in lines[1]
    assert redis_merge.library_status(redis.Redis.from_url(url, decode_responses=True)) is not None
    assert main(["redis-acl", "--apply", *common]) == 0
    as_reader = redis.Redis.from_url(url, username="tagrecall-reader", password="r-secret", decode_responses=True)
    assert as_reader.ping()
    assert redis_merge.library_status(as_reader) is None  # --apply loaded the recall's library
    as_writer = redis.Redis.from_url(url, username="tagrecall-writer", password="w-secret", decode_responses=True)
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis_merge.load_library(as_writer)
    # --load-function loads it alone (users set from an ACL file), as the administrator.
    as_writer.close()
    redis.Redis.from_url(url).function_flush()
    assert main(["redis-acl", "--load-function", *common]) == 0
    assert redis_merge.library_status(as_reader) is None
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_reader.set("tagrecall:current", "x")
    # The printed lines are the same rules, and their hashes are the passwords'.
    other = redis_server()
    admin = redis.Redis.from_url(other, decode_responses=True)
    for line in lines:
        user, *rules = line.split()[1:]
        admin.execute_command("ACL", "SETUSER", user, *rules)
    assert redis.Redis.from_url(other, username="tagrecall-writer", password="w-secret").ping()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (it makes the test's certificate)")
def test_publish_and_recall_over_tls_with_a_self_signed_certificate(spark, tmp_path, redis_server):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    try:
        url = redis_server(tls=(str(cert), str(key)))
    except RuntimeError as exc:
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    config, tags_of, articles = _day(spark, tmp_path, url)
    untrusted = redis_keys.Connection(url, None, False, 5.0)  # the system's trust store lacks the test's CA
    with pytest.raises(redis.ConnectionError):
        untrusted.client().ping()
    config = config.replace(publish=dataclasses.replace(config.publish, tls_ca_file=str(cert)))
    publish.run(spark, config, dt.date.fromisoformat(DAY))
    _check_recall(redis_keys.connect(config, "reader"), config, tags_of, articles)
