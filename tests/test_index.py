"""Index: quality smoothed towards the prior, freshness, cold start, deterministic ranks, tag_stats."""

from __future__ import annotations

import datetime as dt

import pytest

from jobs import index
from jobs.common.storage import Warehouse
from schemas.config import load_config
from tests.conftest import put_partition

UTC = dt.UTC
DAY = dt.date(2026, 8, 10)
END = dt.datetime(2026, 8, 11, tzinfo=UTC)


def _article(aid, published, tags):
    return (aid, published, published, [{"tag": t, "weight": w} for t, w in tags])


def _event(eid, article, etype, when, dwell_ms=None, user="u1"):
    return (eid, user, article, etype, when, dwell_ms, 0, "r")


def _decay(when, half_life_days):
    return 2 ** (-(END - when).total_seconds() / 86400 / half_life_days)


@pytest.fixture(scope="module")
def indexed(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("index")
    config = load_config(overrides={
        "storage": {"warehouse": str(base / "warehouse"), "raw": str(base / "raw")},
        "index": {"ranking": "quality", "new_article_slots": 0, "top_k": 2, "prior_strength": 10.0, "quality_half_life_days": 7.0,
                  "freshness_half_life_days": 3.0, "max_age_days": 30.0}})
    seen_pub = END - dt.timedelta(days=2)
    new_pub = END - dt.timedelta(hours=6)
    articles = [
        _article("a_seen", seen_pub, [("sport", 0.8), ("news", 0.2)]),
        _article("a_other", seen_pub, [("sport", 0.5), ("music", 0.5)]),
        _article("a_new", new_pub, [("sport", 1.0)]),             # published on D, never shown
        _article("a_old", END - dt.timedelta(days=31), [("sport", 1.0)]),   # beyond max age
        _article("a_future", END + dt.timedelta(hours=1), [("sport", 1.0)]),  # not yet published
        _article("b_twin", seen_pub, [("ties", 1.0)]), _article("a_twin", seen_pub, [("ties", 1.0)]),
        _article("c_twin", seen_pub, [("ties", 1.0)]),
    ]
    put_partition(spark, config, "articles", DAY.isoformat(), articles)
    t_prev = END - dt.timedelta(days=1, hours=12)   # in the previous day's partition
    t_today = END - dt.timedelta(hours=10)
    events_prev = [_event(f"p{i}", "a_seen", "impression", t_prev, user=f"u{i}") for i in range(4)]
    events_prev += [_event("pc", "a_seen", "click", t_prev, dwell_ms=30_000)]
    events_today = [_event(f"t{i}", "a_other", "impression", t_today, user=f"u{i}") for i in range(6)]
    events_today += [_event("tc", "a_other", "click", t_today, dwell_ms=None),
                     _event("tl", "a_other", "like", t_today)]
    put_partition(spark, config, "events", (DAY - dt.timedelta(days=1)).isoformat(), events_prev)
    put_partition(spark, config, "events", DAY.isoformat(), events_today)
    report = index.run(spark, config, DAY)
    wh = Warehouse(spark, config)
    rows = wh.read_partition("tag_index", DAY.isoformat()).collect()
    stats = {r["tag"]: r for r in wh.read_partition("tag_stats", DAY.isoformat()).collect()}
    expected = _expected(t_prev, t_today, m=10.0)
    return config, report, {(r["tag"], r["article_id"]): r for r in rows}, rows, stats, expected


def _expected(t_prev, t_today, m):
    dp, dt_ = _decay(t_prev, 7.0), _decay(t_today, 7.0)
    n = {"a_seen": 4 * dp, "a_other": 6 * dt_}
    c = {"a_seen": dp, "a_other": dt_}
    s = {"a_seen": 30.0 * dp, "a_other": 0.0}
    k = {"a_seen": dp, "a_other": 0.0}
    p0 = sum(c.values()) / sum(n.values())
    mu0 = sum(s.values()) / sum(k.values())
    quality = {}
    for a in n:
        ctr = (c[a] + m * p0) / (n[a] + m)
        dwell = (s[a] + m * p0 * mu0) / (k[a] + m * p0)
        quality[a] = (ctr / p0) * (dwell / mu0)
    return {"p0": p0, "mu0": mu0, "quality": quality, "n": n, "c": c}


def test_quality_is_smoothed_towards_the_global_prior(indexed):
    _, report, by_key, _, _, expected = indexed
    assert report["prior"]["ctr"] == pytest.approx(expected["p0"], rel=1e-12)
    assert report["prior"]["mean_dwell_sec"] == pytest.approx(expected["mu0"], rel=1e-12)
    for article, tag in (("a_seen", "news"), ("a_other", "music")):
        assert by_key[(tag, article)]["quality"] == pytest.approx(expected["quality"][article], rel=1e-12)
    seen = by_key[("news", "a_seen")]
    assert seen["freshness"] == pytest.approx(2 ** (-2 / 3), rel=1e-12)
    assert seen["score"] == pytest.approx(0.2 * seen["quality"] * seen["freshness"], rel=1e-12)


def test_an_article_published_today_enters_with_the_prior_quality(indexed):
    _, _, by_key, _, _, _ = indexed
    new = by_key[("sport", "a_new")]
    assert new["quality"] == pytest.approx(1.0, rel=1e-12)
    assert new["freshness"] == pytest.approx(2 ** (-0.25 / 3), rel=1e-12)
    # The freshest sport article, with full tag weight, ranks first despite no history.
    assert new["rank"] == 1


def test_too_old_and_unpublished_articles_are_left_out_and_top_k_holds(indexed):
    _, _, by_key, rows, _, _ = indexed
    articles = {a for (_, a) in by_key}
    assert "a_old" not in articles and "a_future" not in articles
    per_tag = {}
    for r in rows:
        per_tag.setdefault(r["tag"], []).append(r["rank"])
    assert all(sorted(ranks) == list(range(1, len(ranks) + 1)) and len(ranks) <= 2 for ranks in per_tag.values())


def test_ties_are_ranked_by_article_id(indexed):
    _, _, by_key, _, _, _ = indexed
    ties = sorted((r["rank"], a) for (t, a), r in by_key.items() if t == "ties")
    assert ties == [(1, "a_twin"), (2, "b_twin")]


def test_tag_stats_add_up_the_window(indexed):
    _, _, _, _, stats, expected = indexed
    n, c = expected["n"], expected["c"]
    sport = stats["sport"]
    assert sport["impressions"] == pytest.approx(n["a_seen"] + n["a_other"], rel=1e-12)
    assert sport["clicks"] == pytest.approx(c["a_seen"] + c["a_other"], rel=1e-12)
    assert sport["ctr"] == pytest.approx((c["a_seen"] + c["a_other"] + 10 * expected["p0"])
                                         / (n["a_seen"] + n["a_other"] + 10), rel=1e-12)
    assert sport["mean_dwell_sec"] == pytest.approx(30.0, rel=1e-12)   # one click with dwell
    assert sport["articles"] == 3   # a_seen, a_other, a_new; a_old and a_future are not indexable
    assert stats["music"]["mean_dwell_sec"] is None and stats["music"]["articles"] == 1
    assert stats["ties"]["impressions"] == 0.0 and stats["ties"]["ctr"] == pytest.approx(expected["p0"])


def test_rerunning_the_index_gives_the_same_tables(spark, indexed):
    config, _, _, rows, stats, _ = indexed
    index.run(spark, config, DAY)
    wh = Warehouse(spark, config)
    assert sorted(wh.read_partition("tag_index", DAY.isoformat()).collect()) == sorted(rows)
    assert {r["tag"]: r for r in wh.read_partition("tag_stats", DAY.isoformat()).collect()} == stats
