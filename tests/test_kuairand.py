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


def _kuairand_config(imported, tmp_path):
    """The KuaiRand configuration over the imported week, with a warehouse of the test's own."""
    return load_config(REPO / "jobs" / "conf" / "kuairand.toml",
                       overrides={"storage": {"raw": str(imported), "warehouse": str(tmp_path / "wh")}})


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
    config = _kuairand_config(imported, tmp_path)
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

    config = _kuairand_config(imported, tmp_path)
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


def _events_of(raw) -> list[dict]:
    return [{**json.loads(line), "dt": path.parent.name[3:]} for path in sorted(raw.glob("events/dt=*/*.jsonl"))
            for line in path.read_text().splitlines()]


def _without_ids(events: list[dict]) -> Counter:
    return Counter(json.dumps({k: v for k, v in e.items() if k != "event_id"}, sort_keys=True) for e in events)


def test_every_log_file_is_read_random_exposures_are_marked_and_overlapping_releases_refused(imported, tmp_path):
    """The week split by date into two standard files (as the full release ships its logs)
    lands the same events; a random-exposure file is read only when asked, its rows marked;
    two files holding the same days are refused, naming both."""
    import pandas as pd

    week = pd.read_csv(KUAIRAND / LOG_FILE)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("user_features_pure.csv", "video_features_basic_pure.csv"):
        (src / name).symlink_to(KUAIRAND / name)
    early = week["date"] <= 20220428
    week[early].to_csv(src / "log_standard_4_25_to_4_28_pure.csv", index=False)
    week[~early].to_csv(src / "log_standard_4_29_to_5_01_pure.csv", index=False)
    shown = week.sample(200, random_state=3).assign(is_rand=1, is_click=0, is_like=0, is_comment=0, is_forward=0,
                                                    is_follow=0)
    shown.to_csv(src / "log_random_4_25_to_5_01_pure.csv", index=False)

    split = import_kuairand(src, tmp_path / "split")
    assert split["files"] == ["log_standard_4_25_to_4_28_pure.csv", "log_standard_4_29_to_5_01_pure.csv"]
    # The same events (ids aside: the split reorders rows) as the single file gives.
    assert _without_ids(_events_of(tmp_path / "split")) == _without_ids(_events_of(imported))

    with_random = import_kuairand(src, tmp_path / "random", random=True)
    events = _events_of(tmp_path / "random")
    marked = [e for e in events if e["request_id"] == "random"]
    assert with_random["random_log_rows"] == with_random["random_impressions"] == len(marked) == 200
    assert {e["event_type"] for e in marked} == {"impression"} and all(e["event_id"].startswith("krr") for e in marked)
    assert Counter((e["user_id"], e["article_id"], e["event_time"]) for e in marked) == Counter(
        (str(u), str(v), t) for u, v, t in zip(shown["user_id"], shown["video_id"], shown["time_ms"], strict=True))
    assert _without_ids([e for e in events if e["request_id"] != "random"]) == _without_ids(_events_of(imported))
    assert len({e["event_id"] for e in events}) == len(events)

    (src / "log_standard_4_25_to_5_01_pure.csv").symlink_to(KUAIRAND / LOG_FILE)
    with pytest.raises(ValueError, match="log_standard_4_25_to_4_28_pure.csv.*log_standard_4_25_to_5_01_pure.csv"):
        import_kuairand(src, tmp_path / "twice")
    for path in src.glob("log_standard_*"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="no log_standard_"):
        import_kuairand(src, tmp_path / "none")


def test_export_scores_at_a_context_the_training_triples_hold_on_a_feed_without_positions(spark, imported, tmp_path):
    """No train/serve skew on the real week, which records no positions: the model's
    categorical context values at export (position, hour) are values the training triples
    hold, not one whose embedding training never updated."""
    from jobs import export, index, profiles, triples
    from jobs.common.inputs import feature_tables
    from jobs.transforms.features import with_features

    config = _kuairand_config(imported, tmp_path)
    days = (dt.date(2022, 4, 25), dt.date(2022, 4, 26))
    for day in days:
        ingest.run(spark, config, day)
        profiles.run(spark, config, day)
        index.run(spark, config, day)
    triples.run(spark, config, days[-1])
    wh = Warehouse(spark, config)
    d = days[-1].isoformat()

    def values(df, column: str) -> set[str]:
        return {r[0] for r in df.select(column).distinct().collect()}

    trained = wh.read_partition("training_triples", d)
    assert values(trained, "position") == {"none"}  # the feed has no positions
    # What export's multi-task scoring feeds the model: D's candidates at the reference
    # context, their features from D's tables (jobs/export.py, multitask_scores).
    cands = export.candidates(wh.read_partition("user_tag_profile", d), wh.read_partition("users", d),
                              wh.read_partition("tag_stats", d), config.export.candidate_tags)
    scored = with_features(export.at_reference_context(cands, config),
                           feature_tables(wh, days[-1] + dt.timedelta(days=1)), config)
    for column in ("position", "hour"):
        served, seen = values(scored, column), values(trained, column)
        assert served <= seen, f"export scores at {column} {sorted(served - seen)}; training saw {sorted(seen)}"
