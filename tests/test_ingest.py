"""Ingest: every rule refuses the record that breaks it, and nothing is lost."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.testing import assertDataFrameEqual

from jobs import ingest
from jobs.common.storage import Warehouse
from tests.conftest import write_landing

D = dt.date(2026, 11, 20)
DAY = D.isoformat()
START_MS = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 3600 * 1000


def event(event_id, *, user="u1", article="a1", event_type="impression", t=START_MS + 10 * HOUR,
          dwell=None, position=0, request="r1"):
    return {"event_id": event_id, "user_id": user, "article_id": article, "event_type": event_type,
            "event_time": t, "dwell_ms": dwell, "position": position, "request_id": request}


USERS = [{"user_id": "u1", "features": {"age": "25-34"}, "updated_time": START_MS},
         {"user_id": "u2", "features": {"age": "18-24"}}]
ARTICLES = [{"article_id": "a1", "publish_time": START_MS - 5 * HOUR,
             "tags": [{"tag": "t1", "weight": 0.6}, {"tag": "t2", "weight": 0.4}]},
            {"article_id": "a2", "publish_time": START_MS + HOUR, "tags": [{"tag": "t3", "weight": 1.0}]}]

GOOD_EVENTS = [
    event("e1"),
    event("e2", event_type="click", dwell=42_000),
    event("e3", t=START_MS - 2 * HOUR),                       # late, within 24 h: accepted
    event("e4", user="u2", article="a2", t=START_MS + 24 * HOUR + 2 * 60_000,  # clock skew
          request="r}{4"),                                    # braces in a value: one record
]
# Not a flat record (a nested field holding NaN, which the JSON reader accepts), spaces after it.
GOOD_LINES = ['{"event_id": "e5", "user_id": "u1", "article_id": "a1", "event_type": "impression", '
              f'"event_time": {START_MS + HOUR}, "request_id": "r5", "extra": {{"nested": [1, NaN]}}}}  ']
# (raw line, reason) for every rule; the raw line must come back verbatim in `rejected`.
BAD_EVENTS = [
    ('{"event_id": "e10", "user_id": ', "malformed_record"),
    ("", "malformed_record"),
    ("[1, 2, 3]", "malformed_record"),
    (json.dumps(event("e23")) + " x", "malformed_record"),          # text after the object
    (json.dumps(event("e24")) + json.dumps(event("e25")), "malformed_record"),  # two records, one line
    (json.dumps(event("e26")) + ', {"event_id": "e27"}', "malformed_record"),
    (json.dumps(event("e28")) + "] x", "malformed_record"),           # behind a ] the array parse ends
    (json.dumps(event("e29")) + ", 0]", "malformed_record"),
    (json.dumps(event("e11", user=None)), "missing_field"),
    (json.dumps(event("e12", user="  ")), "missing_field"),
    (json.dumps(event("e13", t="noon")), "bad_type"),
    (json.dumps(event("e14", event_type="click", dwell="long")), "bad_type"),
    (json.dumps(event("e15", event_type="swipe")), "unknown_event_type"),
    (json.dumps(event("e16", event_type="click", dwell=-5)), "negative_dwell"),
    (json.dumps(event("e17", event_type="click", dwell=7 * HOUR)), "absurd_dwell"),
    (json.dumps(event("e18", position=-1)), "bad_position"),
    (json.dumps(event("e19", t=START_MS - 25 * HOUR)), "too_late"),
    (json.dumps(event("e20", t=START_MS + 24 * HOUR + 10 * 60_000)), "in_future"),
    (json.dumps(event("e21", user="u404")), "unknown_user"),
    (json.dumps(event("e22", article="a404")), "unknown_article"),
    (json.dumps(event("e1")), "duplicate_event_id"),
]


@pytest.fixture
def landed(tmp_path, make_config):
    config = make_config()
    raw = tmp_path / "raw"
    write_landing(raw, "users", DAY, USERS + ['{"user_id": "u3"', {"features": {}},
                                               {"user_id": "u5", "updated_time": "soon"}])
    write_landing(raw, "articles", DAY, ARTICLES + [
        {"article_id": "a7", "publish_time": START_MS, "tags": [{"tag": "t1", "weight": 1.5}]},
        {"article_id": "a8", "publish_time": START_MS, "tags": [{"tag": "t1", "weight": 0.5},
                                                                {"tag": "t1", "weight": 0.5}]},
        {"article_id": "a9", "tags": []}])
    write_landing(raw, "events", DAY, GOOD_EVENTS + GOOD_LINES + [line for line, _ in BAD_EVENTS])
    return config


def test_each_rule_refuses_the_record_that_breaks_it(spark, landed):
    report = ingest.run(spark, landed, D)
    wh = Warehouse(spark, landed)
    rejected = {(r["source"], r["raw"]): r["reason"] for r in wh.read_partition("rejected", DAY).collect()}
    for line, reason in BAD_EVENTS:
        assert rejected.get(("events", line)) == reason, line
    assert sum(1 for s, _ in rejected if s == "events") == len(BAD_EVENTS)
    details = {r["raw"]: r["detail"] for r in wh.read_partition("rejected", DAY).collect()}
    for line, _ in BAD_EVENTS[3:8]:
        assert details[line].startswith("text after the JSON object"), line
    assert sorted(r["event_id"] for r in wh.read_partition("events", DAY).collect()) == ["e1", "e2", "e3", "e4", "e5"]
    assert report["sources"]["events"] == {
        "landed": 26, "accepted": 5,
        "rejected": {"malformed_record": 8, "missing_field": 2, "bad_type": 2, "unknown_event_type": 1,
                     "negative_dwell": 1, "absurd_dwell": 1, "bad_position": 1, "too_late": 1,
                     "in_future": 1, "unknown_user": 1, "unknown_article": 1, "duplicate_event_id": 1}}
    user_reasons = sorted(r for (s, _), r in rejected.items() if s == "users")
    assert user_reasons == ["bad_type", "malformed_record", "missing_field"]
    article_reasons = sorted(r for (s, _), r in rejected.items() if s == "articles")
    assert article_reasons == ["bad_tags", "bad_tags", "missing_field"]


def test_typed_values_of_accepted_events(spark, landed):
    ingest.run(spark, landed, D)
    rows = {r["event_id"]: r for r in Warehouse(spark, landed).read_partition("events", DAY).collect()}
    assert rows["e2"]["dwell_ms"] == 42_000 and rows["e2"]["event_type"] == "click"
    assert rows["e1"]["dwell_ms"] is None
    expected = dt.datetime(2026, 11, 19, 22, 0)  # START - 2 h, in the session's UTC
    assert rows["e3"]["event_time"] == expected
    users = {r["user_id"]: r for r in Warehouse(spark, landed).read_partition("users", DAY).collect()}
    assert users["u1"]["features"] == {"age": "25-34"}
    # A user record without updated_time is as new as the end of the day it landed.
    assert users["u2"]["updated_time"] == dt.datetime(2026, 11, 20, 23, 59, 59, 999999)


def test_rerun_gives_the_same_tables(spark, landed):
    ingest.run(spark, landed, D)
    wh = Warehouse(spark, landed)
    first = {t: wh.read_partition(t, DAY).toPandas() for t in ("events", "rejected", "articles", "users")}
    ingest.run(spark, landed, D)
    for name, before in first.items():
        after = wh.read_partition(name, DAY)
        assertDataFrameEqual(after, spark.createDataFrame(before, schema=after.schema))


def test_duplicate_of_an_event_ingested_the_day_before(spark, tmp_path, make_config):
    config = make_config()
    raw = tmp_path / "raw"
    nxt = (D + dt.timedelta(days=1)).isoformat()
    write_landing(raw, "users", DAY, USERS)
    write_landing(raw, "articles", DAY, ARTICLES)
    write_landing(raw, "events", DAY, [event("e1"), event("e2")])
    write_landing(raw, "users", nxt, [])
    write_landing(raw, "articles", nxt, [])
    # e1 again (redelivered, same event time on D) and a genuinely late e5.
    write_landing(raw, "events", nxt, [event("e1"), event("e5", t=START_MS + 23 * HOUR)])
    ingest.run(spark, config, D)
    report = ingest.run(spark, config, D + dt.timedelta(days=1))
    wh = Warehouse(spark, config)
    assert [r["event_id"] for r in wh.read_partition("events", nxt).collect()] == ["e5"]
    (dup,) = wh.read_partition("rejected", nxt).collect()
    assert (dup["reason"], dup["detail"]) == ("duplicate_event_id", "ingested on an earlier day")
    assert report["balance"]["events"]["balanced"]


def test_an_event_of_the_next_days_first_minutes_is_accepted_on_one_day_only(spark, tmp_path, make_config):
    # Day D accepts events stamped up to D+1's start plus the clock skew (5 minutes): e7,
    # stamped 00:02 on D+1, lands on D and is accepted there; delivered again on D+1, its
    # copy is a duplicate, although it is not dated before D+1.
    config = make_config()
    raw = tmp_path / "raw"
    nxt = (D + dt.timedelta(days=1)).isoformat()
    early_next = START_MS + 24 * HOUR + 2 * 60_000
    write_landing(raw, "users", DAY, USERS)
    write_landing(raw, "articles", DAY, ARTICLES)
    write_landing(raw, "events", DAY, [event("e1"), event("e7", t=early_next)])
    write_landing(raw, "users", nxt, [])
    write_landing(raw, "articles", nxt, [])
    write_landing(raw, "events", nxt, [event("e7", t=early_next), event("e8", t=early_next)])
    ingest.run(spark, config, D)
    report = ingest.run(spark, config, D + dt.timedelta(days=1))
    wh = Warehouse(spark, config)
    assert sorted(r["event_id"] for r in wh.read_partition("events", DAY).collect()) == ["e1", "e7"]
    assert [r["event_id"] for r in wh.read_partition("events", nxt).collect()] == ["e8"]
    (dup,) = wh.read_partition("rejected", nxt).collect()
    assert (dup["reason"], dup["detail"]) == ("duplicate_event_id", "ingested on an earlier day")
    assert report["balance"]["events"]["balanced"]


def test_article_snapshot_keeps_each_articles_latest_version(spark, tmp_path, make_config):
    config = make_config()
    raw = tmp_path / "raw"
    nxt = (D + dt.timedelta(days=1)).isoformat()
    write_landing(raw, "users", DAY, USERS)
    write_landing(raw, "articles", DAY, ARTICLES)
    write_landing(raw, "events", DAY, [event("e1")])
    write_landing(raw, "users", nxt, [])
    write_landing(raw, "articles", nxt, [
        # a1 re-tagged on D+1; a stale version of a2 (older updated_time) arrives too.
        {**ARTICLES[0], "updated_time": START_MS + 30 * HOUR, "tags": [{"tag": "t9", "weight": 1.0}]},
        {**ARTICLES[1], "updated_time": START_MS - 10 * HOUR, "tags": [{"tag": "old", "weight": 1.0}]},
        {"article_id": "a3", "publish_time": START_MS + 26 * HOUR, "tags": [{"tag": "t1", "weight": 1.0}]}])
    write_landing(raw, "events", nxt, [event("e2", article="a3", t=START_MS + 27 * HOUR)])
    ingest.run(spark, config, D)
    ingest.run(spark, config, D + dt.timedelta(days=1))
    snap = {r["article_id"]: [t["tag"] for t in r["tags"]]
            for r in Warehouse(spark, config).read_partition("articles", nxt).collect()}
    assert snap == {"a1": ["t9"], "a2": ["t3"], "a3": ["t1"]}
    # The event on the article published on D+1 is known.
    assert Warehouse(spark, config).read_partition("events", nxt).count() == 1


def test_reject_ratio_fails_after_writing_rejected(spark, tmp_path, make_config):
    config = make_config(ingest={"max_reject_ratio": 0.05})
    raw = tmp_path / "raw"
    write_landing(raw, "users", DAY, USERS)
    write_landing(raw, "articles", DAY, ARTICLES)
    good = [event(f"g{i}") for i in range(180)]
    bad = [event(f"b{i}", event_type="swipe") for i in range(20)]
    write_landing(raw, "events", DAY, good + bad)
    with pytest.raises(ingest.RejectRatioExceeded, match=r"events 10\.0%.*rejected/dt=2026-11-20"):
        ingest.run(spark, config, D)
    wh = Warehouse(spark, config)
    assert wh.read_partition("rejected", DAY).where("source = 'events'").count() == 20
    assert not wh.has_partition("events", DAY)
    assert wh.read_run_report("ingest", DAY)["status"] == "failed"


def test_missing_landing_names_the_path(spark, make_config):
    with pytest.raises(FileNotFoundError, match=r"raw articles for 2026-11-20 not found under .*raw/articles/dt=2026-11-20"):
        ingest.run(spark, make_config(), D)


def test_a_run_leaves_nothing_cached(spark, landed):
    # Cached snapshots that outlive the run pile up across `tagrecall run --until`.
    spark.catalog.clearCache()
    ingest.run(spark, landed, D)
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()


def test_reject_ratio_and_balance_by_hand():
    counts = {"events": ingest.source_counts({None: 90, "bad_type": 6, "too_late": 4}),
              "users": ingest.source_counts({None: 3, "missing_field": 2})}
    assert counts["events"] == {"landed": 100, "accepted": 90, "rejected": {"bad_type": 6, "too_late": 4}}
    cfg = ingest.IngestConfig(max_reject_ratio=0.05, reject_ratio_min_records=10)
    ratios, over = ingest.reject_ratios(counts, cfg)
    assert ratios == {"events": 0.10, "users": 0.40}
    assert over == {"events": 0.10}  # users landed 5 records, below reject_ratio_min_records
    ok = ingest.balance(counts, events_written=90, rejected_written={"events": 10, "users": 2})
    assert all(b["balanced"] for b in ok.values())
    lost = ingest.balance(counts, events_written=89, rejected_written={"events": 10, "users": 1})
    assert not lost["events"]["balanced"] and not lost["users"]["balanced"]
