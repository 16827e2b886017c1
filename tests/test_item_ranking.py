"""The index's rankings, its cold-start quota and popular_items
(jobs/transforms/item_ranking.py) against hand arithmetic on a few articles."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from jobs.transforms.item_ranking import (
    article_engagement,
    article_values,
    popular_items,
    ranked_per_tag,
)

END = dt.datetime(2026, 8, 11, tzinfo=dt.UTC)
H_CLICKS, H_QUALITY, H_FRESH, M = 1.0, 7.0, 3.0, 10.0
ARTICLES = [  # (article_id, published days before END, tags)
    ("s1", 5.0, [("t", 1.0)]),
    ("s2", 5.0, [("t", 0.5), ("u", 0.5)]),
    ("n1", 0.25, [("t", 1.0)]),    # published 6 h before the end, never shown: new
    ("n2", 10.0, [("t", 1.0)]),    # published long ago, first shown 3 h before the end: new
    ("o1", 10.0, [("t", 1.0)]),    # published long ago, never shown: not new
]
SHOWN = {  # article: (days before END, impressions, clicks)
    "s1": (2.0, 10, 4), "s2": (1.5, 5, 2), "n2": (0.125, 2, 0)}


def _decay(days, half_life):
    return 2 ** (-days / half_life)


@pytest.fixture(scope="module")
def tables(spark):
    articles = spark.createDataFrame(
        [(a, END - dt.timedelta(days=d), [{"tag": t, "weight": w} for t, w in tags]) for a, d, tags in ARTICLES],
        "article_id string, publish_time timestamp, tags array<struct<tag:string,weight:double>>")
    events = [(a, "impression", END - dt.timedelta(days=d), None) for a, (d, n, _) in SHOWN.items() for _ in range(n)]
    events += [(a, "click", END - dt.timedelta(days=d), None) for a, (d, _, c) in SHOWN.items() for _ in range(c)]
    events = spark.createDataFrame(events, "article_id string, event_type string, event_time timestamp, dwell_ms long")
    return articles, article_engagement(events, END, H_QUALITY, H_CLICKS)


def _index(tables, ranking, top_k, slots, p0=None):
    articles, engagement = tables
    values = article_values(articles, engagement, END, ranking, p0=p0, mu0=None, prior_strength=M,
                            freshness_half_life_days=H_FRESH, new_article_days=1.0)
    rows = ranked_per_tag(values, top_k, slots).collect()
    return {(r["tag"], r["article_id"]): (r["rank"], r["score"]) for r in rows}


def test_clicks_ranks_by_decayed_clicks_and_new_articles_enter_as_the_average(tables):
    recent = {a: c * _decay(d, H_CLICKS) for a, (d, _, c) in SHOWN.items()}
    prior = sum(recent.values()) / len(recent)   # the mean over the shown articles, n2's 0 included
    got = _index(tables, "clicks", top_k=3, slots=0)
    assert {k: v[1] for k, v in got.items() if k[0] == "t"} == pytest.approx(
        {("t", "s1"): recent["s1"], ("t", "n1"): prior, ("t", "s2"): 0.5 * recent["s2"]}, rel=1e-12)
    assert [a for (t, a), (r, _) in sorted(got.items(), key=lambda kv: kv[1][0]) if t == "t"] == ["s1", "n1", "s2"]
    assert got[("u", "s2")] == (1, pytest.approx(0.5 * recent["s2"], rel=1e-12))


def test_the_quota_lets_new_articles_in_by_tag_weight_and_freshness(tables):
    # Two reserved places: n1 (fresher) and n2 (score 0: shown, never clicked), then the best
    # other article, s1; s2 and o1 are left out. Ranks stay by score.
    got = _index(tables, "clicks", top_k=3, slots=2)
    assert sorted((r, a) for (t, a), (r, _) in got.items() if t == "t") == [(1, "s1"), (2, "n1"), (3, "n2")]
    one = _index(tables, "clicks", top_k=3, slots=1)
    assert sorted(a for (t, a) in one if t == "t") == ["n1", "s1", "s2"]


def test_exposure_is_the_smoothed_rate_times_decayed_impressions(tables):
    n = {a: i * _decay(d, H_CLICKS) for a, (d, i, _) in SHOWN.items()}   # the recent half-life
    c = {a: k * _decay(d, H_CLICKS) for a, (d, _, k) in SHOWN.items()}
    p0 = sum(c.values()) / sum(n.values())
    value = {a: (c[a] + M * p0) / (n[a] + M) * n[a] for a in n}
    got = _index(tables, "exposure", top_k=10, slots=0, p0=p0)
    expected = {("t", "s1"): value["s1"], ("t", "s2"): 0.5 * value["s2"], ("t", "n2"): value["n2"],
                ("t", "n1"): sum(value.values()) / 3, ("t", "o1"): 0.0, ("u", "s2"): 0.5 * value["s2"]}
    assert {k: v[1] for k, v in got.items()} == pytest.approx(expected, rel=1e-12)


def test_quality_is_quality_times_freshness(tables):
    got = _index(tables, "quality", top_k=10, slots=0)   # no prior: every quality is 1.0
    assert got[("t", "n1")][1] == pytest.approx(_decay(0.25, H_FRESH), rel=1e-12)
    assert got[("u", "s2")][1] == pytest.approx(0.5 * _decay(5.0, H_FRESH), rel=1e-12)


def test_popular_items_are_the_most_recently_clicked(tables):
    _, engagement = tables
    got = [(r["rank"], r["article_id"], r["clicks"]) for r in popular_items(engagement, 5).collect()]
    assert got == [(1, "s1", pytest.approx(4 * _decay(2, 1))), (2, "s2", pytest.approx(2 * _decay(1.5, H_CLICKS)))]


def test_an_unknown_ranking_is_refused(tables):
    with pytest.raises(ValueError, match="index.ranking 'views'"):
        _index(tables, "views", top_k=3, slots=0)


def test_ranker_features_equal_hand_arithmetic(spark, tables):
    from jobs.transforms.item_ranking import RANKER_FEATURES, ranker_features

    articles, _ = tables
    events = [(a, "impression", END - dt.timedelta(days=d)) for a, (d, n, _) in SHOWN.items() for _ in range(n)]
    events += [(a, "click", END - dt.timedelta(days=d)) for a, (d, _, c) in SHOWN.items() for _ in range(c)]
    events = spark.createDataFrame(events, "article_id string, event_type string, event_time timestamp")
    got = {r["article_id"]: r for r in ranker_features(events, articles, END, M, 1.0).collect()}
    c7 = {a: c * _decay(d, 7) for a, (d, _, c) in SHOWN.items()}
    n7 = {a: n * _decay(d, 7) for a, (d, n, _) in SHOWN.items()}
    p0 = sum(c7.values()) / sum(n7.values())
    s1 = got["s1"]
    assert s1["log_clicks_1d"] == pytest.approx(math.log1p(4 * _decay(2, 1)), rel=1e-12)
    assert s1["log_impressions_6h"] == pytest.approx(math.log1p(10 * _decay(2, 0.25)), rel=1e-12)
    assert s1["ctr_7d"] == pytest.approx((c7["s1"] + M * p0) / (n7["s1"] + M), rel=1e-12)
    assert (s1["age_days"], s1["new"]) == (pytest.approx(5.0), 0.0)
    # s1's best tag is t: the decayed clicks of every article carrying t (s1 and s2; n2 has none).
    assert s1["log_tag_clicks_7d"] == pytest.approx(math.log1p(c7["s1"] + c7["s2"]), rel=1e-12)
    n1 = got["n1"]   # never shown: zero history, new, and its tag's clicks
    assert [n1[f] for f in RANKER_FEATURES[:6]] == [0.0] * 6 and n1["new"] == 1.0
    assert n1["ctr_7d"] == pytest.approx(M * p0 / M, rel=1e-12)


def test_the_learned_ranker_fits_on_the_day_before_and_never_reads_a_later_partition(spark, tmp_path):
    """The training rows of D are D-1's features with D's clicks as the label: an article
    clicked for the first time on D has no history in them but its label; an event of D+1
    reaches neither; D's index, fitted and scored, is the same whatever D+1 holds."""
    from jobs import index
    from jobs.common.storage import Warehouse
    from schemas.config import load_config
    from tests.conftest import put_partition

    config = load_config(overrides={"storage": {"warehouse": str(tmp_path / "wh"), "raw": str(tmp_path / "raw")},
                                    "index": {"ranking": "learned", "top_k": 5, "new_article_slots": 0}})
    day = dt.date(2026, 8, 10)
    days = {day - dt.timedelta(days=1): "prev", day: "day", day + dt.timedelta(days=1): "next"}
    catalogue = [(f"a{i}", dt.datetime(2026, 8, 1, tzinfo=dt.UTC), dt.datetime(2026, 8, 1, tzinfo=dt.UTC),
                  [{"tag": "t", "weight": 1.0}]) for i in range(6)]
    for d in days:
        put_partition(spark, config, "articles", d.isoformat(), catalogue)

    def events(d, article, clicks, impressions):
        noon = dt.datetime(d.year, d.month, d.day, 12, tzinfo=dt.UTC)
        rows = [(f"{d}-{article}-i{j}", f"u{j}", article, "impression", noon, None, None, None)
                for j in range(impressions)]
        return rows + [(f"{d}-{article}-c{j}", f"u{j}", article, "click", noon, 1000, None, None) for j in range(clicks)]

    prev = [e for i in range(5) for e in events(day - dt.timedelta(days=1), f"a{i}", i, 10)]
    put_partition(spark, config, "events", (day - dt.timedelta(days=1)).isoformat(), prev)
    put_partition(spark, config, "events", day.isoformat(),
                  [e for i in range(5) for e in events(day, f"a{i}", i + 1, 10)] + events(day, "a5", 9, 10))
    training = {r["article_id"]: r for r in index.ranker_training(Warehouse(spark, config), config, day).collect()}
    assert training["a5"]["label"] == 9.0 and training["a5"]["log_clicks_7d"] == 0.0   # first clicked on D
    assert training["a3"]["label"] == 4.0
    assert training["a3"]["log_clicks_1d"] == pytest.approx(math.log1p(3 * _decay(0.5, 1)), rel=1e-12)

    def index_of_day():
        index.run(spark, config, day)
        return sorted(Warehouse(spark, config).read_partition("tag_index", day.isoformat()).collect())

    before = index_of_day()
    assert index.run(spark, config, day)["ranker"]["fitted_on"] == (day - dt.timedelta(days=1)).isoformat()
    put_partition(spark, config, "events", (day + dt.timedelta(days=1)).isoformat(),
                  events(day + dt.timedelta(days=1), "a0", 50, 60))
    assert index_of_day() == before
    # a5, clicked most on D, ranks first for D+1 (rank 1 of tag t)
    assert [r["article_id"] for r in before if r["rank"] == 1] == ["a5"]
