"""The synthetic feed: deterministic, realistic in the ways later steps rely on, and
every injected bad record is refused by ingest with the reason it was planted for."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from jobs import ingest
from jobs.common.storage import Warehouse
from jobs.tools.synthetic import FeedParams, generate

START = dt.date(2026, 11, 1)
SMALL = FeedParams(users=300, articles=400, tags=40, bad_rate=0.02, seed=11)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}


def _lines(root: Path, source: str, day: str) -> list[dict]:
    out = []
    for path in sorted((root / source / f"dt={day}").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{") and line.endswith("}")]
    return out


@pytest.fixture(scope="module")
def feed(tmp_path_factory):
    raw = tmp_path_factory.mktemp("feed") / "raw"
    generate(raw, START, 3, SMALL)
    return raw


def test_same_seed_same_bytes_other_seed_other_bytes(feed, tmp_path):
    generate(tmp_path / "again", START, 3, SMALL)
    assert _digest(tmp_path / "again") == _digest(feed)
    generate(tmp_path / "other", START, 3, FeedParams(**{**SMALL.__dict__, "seed": 12}))
    assert _digest(tmp_path / "other") != _digest(feed)


def test_clicks_follow_planted_interests_and_position(feed):
    truth = {json.loads(line)["user_id"]: json.loads(line)["long_interests"]
             for line in (feed / "_truth" / "users.jsonl").read_text().splitlines()}
    articles = {a["article_id"]: {t["tag"] for t in a["tags"]} for a in _lines(feed, "articles", "2026-11-01")}
    shown = Counter()
    clicked = Counter()
    by_pos = Counter()
    clicks_pos = Counter()
    events = [e for e in _lines(feed, "events", "2026-11-01") if "-bad" not in e["event_id"]]
    clicks = {(e["request_id"], e["article_id"], e["position"]) for e in events if e["event_type"] == "click"}
    for e in events:
        if e["event_type"] != "impression" or e["article_id"] not in articles:
            continue
        match = bool(articles[e["article_id"]] & set(truth.get(e["user_id"], {})))
        hit = (e["request_id"], e["article_id"], e["position"]) in clicks
        shown[match] += 1
        clicked[match] += hit
        by_pos[e["position"] == 0] += 1
        clicks_pos[e["position"] == 0] += hit
    ctr_match, ctr_other = clicked[True] / shown[True], clicked[False] / shown[False]
    assert ctr_match > 1.5 * ctr_other, (ctr_match, ctr_other)
    assert clicks_pos[True] / by_pos[True] > clicks_pos[False] / by_pos[False]
    dwell = [e["dwell_ms"] for e in events if e["event_type"] == "click"]
    assert all(d is not None and d > 0 for d in dwell)
    assert {e["event_type"] for e in events} == {"impression", "click", "like", "comment", "favorite", "share"}


def test_articles_have_one_to_five_weighted_tags_and_new_ones_daily(feed):
    day2 = _lines(feed, "articles", "2026-11-02")
    assert day2, "no articles landed on day 2"
    for a in _lines(feed, "articles", "2026-11-01") + day2:
        if a.get("article_id") is None or a["article_id"].startswith("a_bad"):
            continue
        weights = [t["weight"] for t in a["tags"]]
        if any(w > 1 for w in weights):
            continue  # a planted bad_tags record
        assert 1 <= len(weights) <= 5 and abs(sum(weights) - 1) < 1e-3
    start2 = int(dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp() * 1000)
    assert any(a.get("publish_time", 0) >= start2 for a in day2)


def test_no_record_is_lost_and_every_planted_bad_record_is_refused_for_its_reason(spark, feed, make_config):
    config = make_config(storage={"raw": str(feed)}, ingest={"max_reject_ratio": 0.5})
    wh = Warehouse(spark, config)
    for offset in range(3):
        day = START + dt.timedelta(days=offset)
        ingest.run(spark, config, day)
        truth = json.loads((feed / "_truth" / "days" / f"dt={day}.json").read_text())
        landed = sum(len(p.read_text().splitlines()) for p in (feed / "events" / f"dt={day}").glob("*.jsonl"))
        assert landed == truth["events_landed"]
        events = wh.read_partition("events", day.isoformat()).count()
        rejected = Counter(r["reason"] for r in wh.read_partition("rejected", day.isoformat())
                           .where("source = 'events'").collect())
        assert events + sum(rejected.values()) == landed
        planted = {k: v for k, v in truth["bad"]["events"].items() if v}
        assert dict(rejected) == planted
        for source in ("articles", "users"):
            got = Counter(r["reason"] for r in wh.read_partition("rejected", day.isoformat())
                          .where(f"source = '{source}'").collect())
            assert dict(got) == {k: v for k, v in truth["bad"][source].items() if v}
    # Late events: day 2's landing holds events of day 1, accepted as late.
    late = wh.read_partition("events", "2026-11-02").where("event_time < timestamp'2026-11-02 00:00:00'").count()
    assert late > 0
