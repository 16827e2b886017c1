"""Profiles: the decay formula by hand, incremental = full, late events, bounds, errors."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from jobs import profiles
from jobs.common.dates import day_bounds
from jobs.common.storage import MissingPartitionError, Warehouse
from tests.conftest import put_partition

UTC = dt.UTC
PUBLISHED = dt.datetime(2026, 1, 1, tzinfo=UTC)
NO_PRUNING = {"min_weight": 0.0, "max_tags_per_user": 10_000}


def _event(eid, user, article, etype, when, dwell_ms=None, position=0):
    return (eid, user, article, etype, when, dwell_ms, position, "r")


def _article(aid, tags):
    return (aid, PUBLISHED, PUBLISHED, [{"tag": t, "weight": w} for t, w in tags])


def _rows(wh, day, cfg):
    df = wh.read_partition("user_tag_profile", day)
    cols = profiles.profile_columns(cfg)
    return {(r["user_id"], r["tag"]): r for r in df.select(*cols).collect()}


def _signal(cfg, etype, dwell_ms=None):
    s = cfg.event_weights.get(etype, 0.0)
    if etype == "click" and dwell_ms is not None:
        s += cfg.dwell_weight * min(math.log1p(dwell_ms / 1000) / math.log1p(cfg.dwell_cap_sec), 1.0)
    return s


def test_weights_follow_the_formula_with_each_horizons_half_life(spark, make_config):
    config = make_config(profiles=NO_PRUNING)
    cfg = config.profiles
    d1, d2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    t1 = dt.datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    t2 = dt.datetime(2026, 3, 2, 20, 30, tzinfo=UTC)
    for d in (d1, d2):
        put_partition(spark, config, "articles", d.isoformat(), [_article("a1", [("x", 0.75), ("y", 0.25)])])
    put_partition(spark, config, "events", "2026-03-01", [
        _event("e1", "u1", "a1", "impression", t1),
        _event("e2", "u1", "a1", "click", t1 + dt.timedelta(seconds=2), dwell_ms=45_000),
    ])
    put_partition(spark, config, "events", "2026-03-02", [
        _event("e3", "u1", "a1", "impression", t2),
        _event("e4", "u1", "a1", "like", t2 + dt.timedelta(seconds=30)),
    ])
    profiles.run(spark, config, d1)
    profiles.run(spark, config, d2)  # incremental from d1
    end = day_bounds(d2, "UTC")[1]
    got = _rows(Warehouse(spark, config), "2026-03-02", cfg)
    events = [("impression", t1, None), ("click", t1 + dt.timedelta(seconds=2), 45_000),
              ("impression", t2, None), ("like", t2 + dt.timedelta(seconds=30), None)]
    for tag, a in (("x", 0.75), ("y", 0.25)):
        row = got[("u1", tag)]
        for horizon, half_life in (("long", 30.0), ("short", 3.0)):
            expected = sum(_signal(cfg, e, dw) * a * 2 ** (-(end - t).total_seconds() / 86400 / half_life)
                           for e, t, dw in events)
            assert row[f"{horizon}_weight"] == pytest.approx(expected, rel=1e-12)
        decay30 = [2 ** (-(end - t).total_seconds() / 86400 / 30) for _, t, _ in events]
        assert row["impressions"] == pytest.approx(decay30[0] + decay30[2], rel=1e-12)
        assert row["clicks"] == pytest.approx(decay30[1], rel=1e-12)
        assert row["last_event_time"].replace(tzinfo=UTC) == t2 + dt.timedelta(seconds=30)


def test_a_late_event_counts_with_its_true_age_once(spark, make_config):
    config = make_config(profiles=NO_PRUNING)
    cfg = config.profiles
    d1, d2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    for d in (d1, d2):
        put_partition(spark, config, "articles", d.isoformat(), [_article("a1", [("x", 1.0)])])
    on_time = dt.datetime(2026, 3, 1, 10, tzinfo=UTC)
    late = dt.datetime(2026, 3, 1, 23, 0, tzinfo=UTC)  # happened on d1, landed with d2
    put_partition(spark, config, "events", "2026-03-01", [_event("e1", "u1", "a1", "like", on_time)])
    put_partition(spark, config, "events", "2026-03-02", [_event("e2", "u1", "a1", "share", late)])
    profiles.run(spark, config, d1)
    profiles.run(spark, config, d2)
    end = day_bounds(d2, "UTC")[1]
    expected = sum(_signal(cfg, e) * 2 ** (-(end - t).total_seconds() / 86400 / 3.0)
                   for e, t in (("like", on_time), ("share", late)))
    assert _rows(Warehouse(spark, config), "2026-03-02", cfg)[("u1", "x")]["short_weight"] == \
        pytest.approx(expected, rel=1e-12)


def _random_history(spark, config, days, seed=3, users=10):
    """Events for ``days`` with late arrivals, and article snapshots whose tags change."""
    rng = random.Random(seed)
    types = ["impression"] * 6 + ["click"] * 3 + ["like", "comment", "favorite", "share"]
    tags = [f"t{i}" for i in range(12)]
    n = 0
    for k, day in enumerate(days):
        arts = []
        for a in range(15):
            # a3's tags change on the third day: each event uses its own day's snapshot.
            chosen = rng.sample(tags, 2) if not (a == 3 and k >= 2) else ["t11"]
            weights = [0.6, 0.4] if len(chosen) == 2 else [1.0]
            arts.append(_article(f"a{a}", list(zip(chosen, weights, strict=True))))
        put_partition(spark, config, "articles", day.isoformat(), arts)
        start, end = day_bounds(day, config.time.timezone)
        rows = []
        for _ in range(120):
            n += 1
            etype = rng.choice(types)
            when = start + dt.timedelta(seconds=rng.uniform(0, (end - start).total_seconds() - 1))
            if k and rng.random() < 0.1:  # late: happened up to 20 h before the day began
                when = start - dt.timedelta(hours=rng.uniform(0.01, 20))
            dwell = rng.choice([None, rng.randint(0, 900_000)]) if etype == "click" else None
            rows.append(_event(f"e{n}", f"u{rng.randint(0, users - 1)}", f"a{rng.randint(0, 14)}", etype, when, dwell))
        put_partition(spark, config, "events", day.isoformat(), rows)


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Berlin"])  # Berlin: a 25-hour day on 2026-10-25
def test_incremental_equals_full_recomputation_over_many_days(spark, make_config, timezone):
    config = make_config(profiles=NO_PRUNING, time={"timezone": timezone})
    days = [dt.date(2026, 10, 20) + dt.timedelta(days=k) for k in range(9)]
    _random_history(spark, config, days)
    wh = Warehouse(spark, config)
    reports = [profiles.run(spark, config, d) for d in days]
    assert [r["mode"] for r in reports] == ["full"] + ["incremental"] * 8
    incremental = _rows(wh, days[-1].isoformat(), config.profiles)
    full_report = profiles.run(spark, config, days[-1], full=True)
    assert full_report["mode"] == "full" and len(full_report["event_dates"]) == 9
    full = _rows(wh, days[-1].isoformat(), config.profiles)
    assert incremental.keys() == full.keys() and len(full) > 50
    for key, row in full.items():
        for col in profiles.weight_columns(config.profiles) + ["impressions", "clicks"]:
            assert incremental[key][col] == pytest.approx(row[col], rel=1e-9, abs=1e-12), (key, col)
        assert incremental[key]["last_event_time"] == row["last_event_time"]


def test_idle_users_carried_without_the_merge_give_the_merged_profile(spark, make_config, tmp_path):
    """Users without events on a day skip the merge (only decay and the min_weight filter);
    with pruning and a cap that bite, the profiles equal those of merging everyone."""
    # min_weight near 1: a row of one impression falls below it after a day without events.
    bounds = {"min_weight": 0.97, "max_tags_per_user": 3}
    days = [dt.date(2026, 6, 1) + dt.timedelta(days=k) for k in range(5)]
    tables, reports_of = {}, {}
    for name, limit in (("merged", 0), ("idle path", 1_000_000)):
        config = make_config(profiles={**bounds, "idle_path_max_users": limit, "idle_path_min_idle_share": 0.0},
                             storage={"warehouse": str(tmp_path / name.replace(" ", "_"))})
        _random_history(spark, config, days, seed=5, users=80)
        wh = Warehouse(spark, config)
        reports = [profiles.run(spark, config, d) for d in days]
        assert [r["idle_path"] for r in reports[1:]] == [limit > 0] * 4, name
        tables[name] = {d: _rows(wh, d.isoformat(), config.profiles) for d in days}
        reports_of[name] = reports
    # The history leaves users idle on each day after the first (about 1 in 5 of 80).
    for d, report in zip(days[1:], reports_of["idle path"][1:], strict=True):
        active = {r["user_id"] for r in wh.read_partition("events", d.isoformat()).select("user_id").collect()}
        before = {u for u, _ in tables["merged"][d - dt.timedelta(days=1)]}
        assert len(before - active) >= 5, d
        # The report's idle share is 1 - active / D-1's users (a lower bound when users are new).
        assert report["idle_share"] == pytest.approx(max(0.0, 1 - len(active) / len(before)), abs=1e-4)
    columns = profiles.weight_columns(config.profiles) + ["impressions", "clicks"]
    for d in days:
        merged, idle = tables["merged"][d], tables["idle path"][d]
        assert merged.keys() == idle.keys(), d
        assert max(Counter(user for user, _ in merged).values()) == 3   # the cap bites
        for key, row in merged.items():
            for col in columns:
                assert idle[key][col] == pytest.approx(row[col], rel=1e-12, abs=1e-15), (d, key, col)
            assert idle[key]["last_event_time"] == row["last_event_time"]


def test_rerunning_a_day_changes_nothing_and_never_double_counts(spark, make_config):
    config = make_config(profiles=NO_PRUNING)
    days = [dt.date(2026, 4, 1) + dt.timedelta(days=k) for k in range(3)]
    _random_history(spark, config, days, seed=11)
    wh = Warehouse(spark, config)
    for d in days:
        profiles.run(spark, config, d)
    first = _rows(wh, "2026-04-03", config.profiles)
    profiles.run(spark, config, days[1])  # re-run the middle day, then the last one again
    profiles.run(spark, config, days[2])
    again = _rows(wh, "2026-04-03", config.profiles)
    assert first.keys() == again.keys()
    for key in first:
        assert again[key]["long_weight"] == pytest.approx(first[key]["long_weight"], rel=1e-12)


def test_bounds_drop_tiny_rows_and_keep_the_strongest_tags_across_horizons(spark, make_config):
    config = make_config(profiles={"min_weight": 0.01, "max_tags_per_user": 2,
                                   "event_weights": {"impression": 0.0, "click": 1.0}, "dwell_weight": 0.0})
    day = dt.date(2026, 5, 20)
    put_partition(spark, config, "articles", day.isoformat(), [
        _article("old", [("old_interest", 1.0)]), _article("new", [("new_interest", 1.0)]),
        _article("mid", [("middling", 1.0)]), _article("seen", [("only_seen", 1.0)])])
    start = day_bounds(day, "UTC")[0]
    late = start - dt.timedelta(hours=23)
    rows = [_event(f"o{i}", "u1", "old", "click", late - dt.timedelta(days=40)) for i in range(40)]
    # 40 clicks 40 days ago: long weight ~15.1 > everything else, short weight ~1e-3 * 40.
    rows += [_event(f"n{i}", "u1", "new", "click", start + dt.timedelta(hours=20)) for i in range(3)]
    rows += [_event(f"m{i}", "u1", "mid", "click", start - dt.timedelta(days=6)) for i in range(4)]
    rows += [_event("s1", "u1", "seen", "impression", start + dt.timedelta(hours=1))]
    put_partition(spark, config, "events", day.isoformat(), rows)
    profiles.run(spark, config, day)
    got = _rows(Warehouse(spark, config), day.isoformat(), config.profiles)
    # by long share: old > middling > new; by short share: new dominates. Two tags kept: old
    # (top long share) and new (top short share); middling is second on both but loses to them.
    assert set(got) == {("u1", "old_interest"), ("u1", "new_interest")}

    config2 = make_config(profiles={"min_weight": 0.5, "max_tags_per_user": 100})
    profiles.run(spark, config2, day, full=True)
    got2 = _rows(Warehouse(spark, config2), day.isoformat(), config2.profiles)
    # only_seen has one impression (weight 0, impressions ~1 >= 0.5): kept for its click-through rate.
    assert ("u1", "only_seen") in got2 and got2[("u1", "only_seen")]["long_weight"] == 0.0
    assert all(max(r["long_weight"], r["short_weight"], r["impressions"]) >= 0.5 for r in got2.values())


def test_extra_horizon_is_configuration_and_a_changed_set_asks_for_full(spark, make_config):
    base = make_config(profiles=NO_PRUNING)
    days = [dt.date(2026, 6, 1), dt.date(2026, 6, 2)]
    _random_history(spark, base, days, seed=5)
    profiles.run(spark, base, days[0])
    three = make_config(profiles={**NO_PRUNING, "half_life_days": {"long": 30.0, "short": 3.0, "hour": 1 / 24}})
    with pytest.raises(ValueError, match="--full"):
        profiles.run(spark, three, days[1])
    profiles.run(spark, three, days[1], full=True)
    cols = Warehouse(spark, three).read_partition("user_tag_profile", "2026-06-02").columns
    assert "hour_weight" in cols and "long_weight" in cols


def test_missing_events_name_the_partition_and_the_step(spark, make_config):
    config = make_config()
    with pytest.raises(MissingPartitionError, match=r"events for 2026-07-01 .*tagrecall ingest --date 2026-07-01"):
        profiles.run(spark, config, dt.date(2026, 7, 1))


def _exchanges_above(plan: str, needle: str) -> list[str]:
    """The Exchange lines of a physical plan's tree string whose subtree has a file scan
    line containing ``needle``."""
    lines = plan.splitlines()

    def depth(line: str) -> int:
        return len(line) - len(line.lstrip(" :+-"))

    found = []
    for i, line in enumerate(lines):
        if "Exchange " not in line:
            continue
        below = []
        for other in lines[i + 1:]:
            if depth(other) <= depth(line):
                break
            below.append(other)
        if any("FileScan" in other and needle in other for other in below):
            found.append(line.strip())
    return found


def test_the_profile_is_stored_bucketed_by_user_and_the_next_day_shuffles_only_its_events(spark, make_config):
    """Each row sits in the file of bucket pmod(murmur3(user_id), buckets), as Spark's hash
    partitioning puts it; the next day's incremental plan has no shuffle over the stored
    profile (the same day from a plain profile has one), and both give the same table."""
    from jobs.common.session import spark_settings

    days = [dt.date(2026, 8, 1) + dt.timedelta(days=k) for k in range(3)]
    tables, plans = {}, {}
    for buckets in (3, 0):
        config = make_config(profiles={"buckets": buckets, "idle_path_max_users": 0},
                             storage={"warehouse": f"{make_config().storage.warehouse}-{buckets}"})
        _random_history(spark, config, days, seed=7, users=40)
        wh = Warehouse(spark, config)
        reports = [profiles.run(spark, config, d) for d in days]
        assert [r["buckets"] for r in reports] == [buckets] * 3
        assert [r.get("previous_bucketed") for r in reports[1:]] == [buckets > 0] * 2
        tables[buckets] = _rows(wh, days[-1].isoformat(), config.profiles)
        # Planned again for the last day, adaptive execution off: the plan as written.
        with spark_settings(spark, {"spark.sql.adaptive.enabled": "false"}), \
                profiles.built(wh, config, days[-1]) as (profile, _):
            plans[buckets] = profile._jdf.queryExecution().executedPlan().treeString()
    location = "long_weight:double"  # the scan of the stored profile (the only input with that column)
    assert _exchanges_above(plans[3], location) == [], plans[3]
    assert "Bucketed: true" in plans[3]
    assert len(_exchanges_above(plans[0], location)) >= 1, plans[0]  # the control: a plain profile is shuffled
    assert tables[3].keys() == tables[0].keys() and len(tables[0]) > 50
    for key, row in tables[0].items():
        for col in profiles.weight_columns(config.profiles):
            assert tables[3][key][col] == pytest.approx(row[col], rel=1e-12, abs=1e-15), (key, col)

    config = make_config(profiles={"buckets": 3}, storage={"warehouse": f"{make_config().storage.warehouse}-3"})
    folder = Path(Warehouse(spark, config).partition_location("user_tag_profile", days[-1].isoformat())
                  .removeprefix("file:"))
    assert json.loads((folder / "_bucketing.json").read_text()) == {"column": "user_id", "count": 3}
    files = Warehouse(spark, config).read_partition("user_tag_profile", days[-1].isoformat()).select(
        "user_id", F.input_file_name().alias("file"))
    placed = {(r["user_id"], int(re.search(r"_(\d{5})\.c\d{3}", r["file"]).group(1))) for r in files.collect()}
    expected = {(r["user_id"], r["b"]) for r in files.select(
        "user_id", F.pmod(F.hash("user_id"), F.lit(3)).alias("b")).distinct().collect()}
    assert placed == expected and len({b for _, b in placed}) == 3
