"""The real week: KuaiRand-Pure imported and ingested with every source row accounted for."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter

import pytest

from jobs import ingest
from jobs.common.storage import Warehouse
from jobs.tools.kuairand import LOG_FILE, import_kuairand
from schemas.config import load_config
from tests.conftest import KUAIRAND, REPO

pytestmark = pytest.mark.skipif(not (KUAIRAND / LOG_FILE).exists(),
                                reason=f"KuaiRand-Pure not found at {KUAIRAND}")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    raw = tmp_path_factory.mktemp("kuairand") / "raw"
    import_kuairand(KUAIRAND, raw)
    return raw


def _source_counts():
    with open(KUAIRAND / LOG_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    per_day = Counter(f"{r['date'][:4]}-{r['date'][4:6]}-{r['date'][6:]}" for r in rows)
    flags = {k: sum(int(r[k]) for r in rows) for k in ("is_click", "is_like", "is_comment", "is_forward", "is_follow")}
    return rows, per_day, flags


def test_import_gives_one_impression_per_log_row_and_a_click_per_is_click(imported):
    rows, per_day, flags = _source_counts()
    assert len(rows) == 115_574
    events = []
    for path in imported.glob("events/dt=*/*.jsonl"):
        events += [json.loads(line) for line in path.read_text().splitlines()]
    types = Counter(e["event_type"] for e in events)
    assert types["impression"] == 115_574
    assert types["click"] == flags["is_click"]
    assert (types["like"], types["comment"], types["share"], types["favorite"]) == \
        (flags["is_like"], flags["is_comment"], flags["is_forward"], flags["is_follow"])
    impressions_per_day = Counter(p.parent.name[3:] for p in imported.glob("events/dt=*/*.jsonl")
                                  for line in p.read_text().splitlines() if '"impression"' in line)
    assert impressions_per_day == per_day


def test_two_real_days_ingest_with_every_row_accounted_for(spark, imported, tmp_path):
    config = load_config(REPO / "jobs" / "conf" / "kuairand.toml",
                         overrides={"storage": {"raw": str(imported), "warehouse": str(tmp_path / "wh")}})
    wh = Warehouse(spark, config)
    for day in (dt.date(2022, 4, 25), dt.date(2022, 4, 26)):
        report = ingest.run(spark, config, day)
        landed = sum(len(p.read_text().splitlines()) for p in imported.glob(f"events/dt={day}/*.jsonl"))
        accepted = wh.read_partition("events", day.isoformat()).count()
        refused = wh.read_partition("rejected", day.isoformat()).where("source = 'events'").count()
        assert accepted + refused == landed
        assert refused == 0, report["sources"]["events"]["rejected"]
    assert wh.read_partition("users", "2022-04-26").count() == 27_285
    assert wh.read_partition("articles", "2022-04-26").count() == 7_583


def test_real_days_profile_every_user_with_a_tagged_event(spark, imported, tmp_path):
    """No user lost: the profile of 04-26 holds exactly the users with an event on a tagged
    video over 04-25..04-26 (counted here from the landing files), and each of their tags."""
    from jobs import index, profiles

    config = load_config(REPO / "jobs" / "conf" / "kuairand.toml",
                         overrides={"storage": {"raw": str(imported), "warehouse": str(tmp_path / "wh")}})
    days = (dt.date(2022, 4, 25), dt.date(2022, 4, 26))
    for day in days:
        ingest.run(spark, config, day)
        profiles.run(spark, config, day)
    index.run(spark, config, days[-1])
    tags = {}
    for path in sorted(imported.glob("articles/dt=*/*.jsonl")):
        if path.parent.name > "dt=2022-04-26":
            continue
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            tags[rec["article_id"]] = {t["tag"] for t in rec["tags"]}
    expected = set()
    for day in days:
        for path in imported.glob(f"events/dt={day}/*.jsonl"):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                expected |= {(rec["user_id"], t) for t in tags.get(rec["article_id"], ())}
    got = {(r["user_id"], r["tag"]) for r in
           Warehouse(spark, config).read_partition("user_tag_profile", "2022-04-26").select("user_id", "tag").collect()}
    assert got == expected
    stats = Warehouse(spark, config).read_partition("tag_stats", "2022-04-26")
    assert stats.count() == len({t for ts in tags.values() for t in ts})
