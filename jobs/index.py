"""Index step: ``articles`` of D and a trailing window of ``events`` -> ``tag_index`` and ``tag_stats``.

For each article of D's snapshot published no later than the end T_D of D and at most
index.max_age_days before it:

    score(tag, article) = a(article, tag) x value(article)

with ``value`` chosen by index.ranking (jobs/transforms/item_ranking.py): ``quality``
(quality x freshness), ``clicks`` (decayed clicks) or ``exposure`` (smoothed click-through
rate x decayed impressions); each tag keeps its top index.top_k articles, up to
index.new_article_slots of them reserved for new articles (the cold-start quota).

freshness = 2^(-(T_D - publish_time) / index.freshness_half_life_days).

quality is empirical Bayes over the last index.quality_window_days days of events, each
event decayed by 2^(-(T_D - time) / index.quality_half_life_days). With decayed impressions
n, clicks c, and dwell seconds s summed over k clicks that carry dwell; the window's global
click-through rate p0 = sum c / sum n and mean dwell mu0 = sum s / sum k; and m =
index.prior_strength pseudo-impressions (which bring m * p0 pseudo-clicks of mean dwell mu0):

    ctr   = (c + m p0) / (n + m)
    dwell = (s + m p0 mu0) / (k + m p0)
    quality = (ctr / p0) x (dwell / mu0)

so 1.0 is an average article, and an article nobody has seen yet (n = c = k = 0) gets
exactly the prior, 1.0, not zero. Under the volume rankings a new article without history
gets the window's mean value instead of zero: new articles enter the index on the day they
are published (the cold-start path of explicit recall).

Ties in score are broken by article_id, so ranks are deterministic. ``tag_stats`` has, per
tag of D's snapshot, the decayed impressions and clicks of articles carrying it
(unweighted), its click-through rate smoothed the same way, its mean dwell per click, and
the number of indexable articles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.dates import day_bounds
from jobs.common.entry import Step
from jobs.common.storage import Warehouse
from jobs.transforms.decay import DAY_SEC, age_seconds
from jobs.transforms.item_ranking import (
    RANKER_FEATURES,
    article_engagement,
    article_values,
    fit_ranker,
    ranked_per_tag,
    ranker_features,
    ranker_label,
    ranker_values,
    smoothed_ctr,
)
from schemas.config import Config, IndexConfig
from schemas.tables import TAG_INDEX, TAG_STATS

log = logging.getLogger(__name__)

NAME = "index"


def priors(engagement: DataFrame) -> tuple[float | None, float | None]:
    """The window's global click-through rate and mean dwell per click (None when undefined)."""
    row = engagement.agg(F.sum("impressions").alias("n"), F.sum("clicks").alias("c"),
                         F.sum("dwell_sec").alias("s"), F.sum("dwell_clicks").alias("k")).first()
    p0 = row["c"] / row["n"] if row["n"] else None
    mu0 = row["s"] / row["k"] if row["k"] else None
    return p0, mu0


def engagement_of(events: DataFrame, end: dt.datetime, cfg: IndexConfig) -> DataFrame:
    return article_engagement(events, end, cfg.quality_half_life_days, cfg.recent_half_life_days)


def eligible_articles(articles: DataFrame, end: dt.datetime, cfg: IndexConfig) -> DataFrame:
    """(article_id, publish_time, tags): published before ``end``, at most index.max_age_days earlier."""
    age_sec = age_seconds(F.col("publish_time"), end.timestamp())
    return (articles.where((age_sec > 0) & (age_sec <= cfg.max_age_days * DAY_SEC))
            .select("article_id", "publish_time", "tags"))


def scored_articles(articles: DataFrame, engagement: DataFrame, end: dt.datetime, cfg: IndexConfig,
                    p0: float | None, mu0: float | None, learned: DataFrame | None = None) -> DataFrame:
    """(article_id, tags, quality, freshness, new, value) for the articles eligible on the day
    ending ``end``; ``learned``: the ranker's values under index.ranking = "learned"."""
    return article_values(eligible_articles(articles, end, cfg), engagement, end, cfg.ranking,
                          p0=p0, mu0=mu0, prior_strength=cfg.prior_strength,
                          freshness_half_life_days=cfg.freshness_half_life_days,
                          new_article_days=cfg.new_article_days, learned=learned)


def ranker_training(wh: Warehouse, config: Config, date: dt.date) -> DataFrame | None:
    """The learned ranker's training rows for D: D-1's features (partitions up to D-1, as of
    the end of D-1) with D's clicks as the label; None when D-1 was not ingested."""
    cfg, prev = config.index, date - dt.timedelta(days=1)
    if not (wh.has_partition("articles", prev.isoformat()) and wh.has_partition("events", prev.isoformat())):
        return None
    _, end_prev = day_bounds(prev, config.time.timezone)
    window_prev = [(prev - dt.timedelta(days=k)).isoformat() for k in range(cfg.quality_window_days)]
    before = ranker_features(wh.read_partitions("events", window_prev),
                             eligible_articles(wh.read_partition("articles", prev.isoformat()), end_prev, cfg),
                             end_prev, cfg.prior_strength, cfg.new_article_days)
    return ranker_label(before, wh.read_partition("events", date.isoformat()))


def learned_values(wh: Warehouse, config: Config, date: dt.date, articles: DataFrame, events: DataFrame
                   ) -> tuple[DataFrame, dict] | None:
    """(article_id, value) of the ranker fitted on ``ranker_training`` and applied to D's
    ``articles`` and window of ``events``, and what to report of it; None without D-1 or
    without a click on D to learn from."""
    cfg = config.index
    training = ranker_training(wh, config, date)
    if training is None:
        return None
    training = training.cache()
    totals = training.agg(F.count(F.lit(1)).alias("rows"), F.sum("label").alias("clicks")).first()
    if not totals["clicks"]:
        training.unpersist()
        return None  # nothing to learn from: no row, or no click on D
    model = fit_ranker(training)
    _, end = day_bounds(date, config.time.timezone)
    now = ranker_features(events, eligible_articles(articles, end, cfg), end, cfg.prior_strength, cfg.new_article_days)
    glm = model.stages[-1]
    report = {"fitted_on": (date - dt.timedelta(days=1)).isoformat(), "labels_of": date.isoformat(),
              "rows": totals["rows"], "intercept": glm.intercept,
              "coefficients": dict(zip(RANKER_FEATURES, glm.coefficients.toArray().tolist(), strict=True))}
    training.unpersist()
    return ranker_values(model, now), report


def ranking_inputs(wh: Warehouse, config: Config, date: dt.date, articles: DataFrame, events: DataFrame
                   ) -> tuple[IndexConfig, DataFrame | None, dict | None]:
    """The index settings to rank D with, the learned ranker's values and its report: under
    index.ranking = "learned" without a ranker to fit (the first day, no click on D), the
    articles are ranked by "clicks" instead, with a warning."""
    cfg = config.index
    if cfg.ranking != "learned":
        return cfg, None, None
    fitted = learned_values(wh, config, date, articles, events)
    if fitted is None:
        log.warning("index %s: no day before with clicks on D to fit the learned ranker on; ranked by clicks",
                    date.isoformat())
        return dataclasses.replace(cfg, ranking="clicks"), None, None
    return cfg, fitted[0], fitted[1]


def tag_index(scored: DataFrame, cfg: IndexConfig) -> DataFrame:
    return ranked_per_tag(scored, cfg.top_k, cfg.new_article_slots).select(*TAG_INDEX.fieldNames())


def tag_stats(articles: DataFrame, engagement: DataFrame, scored: DataFrame, cfg: IndexConfig,
              p0: float | None) -> DataFrame:
    tags = articles.select("article_id", F.explode("tags.tag").alias("tag"))
    engaged = (tags.join(engagement, "article_id")
               .groupBy("tag")
               .agg(F.sum("impressions").alias("impressions"), F.sum("clicks").alias("clicks"),
                    F.sum("dwell_sec").alias("dwell_sec"), F.sum("dwell_clicks").alias("dwell_clicks")))
    live = (scored.select(F.explode("tags.tag").alias("tag")).groupBy("tag").agg(F.count(F.lit(1)).alias("articles")))
    all_tags = tags.select("tag").distinct()
    out = all_tags.join(engaged, "tag", "left").join(live, "tag", "left")
    n = F.coalesce(F.col("impressions"), F.lit(0.0))
    c = F.coalesce(F.col("clicks"), F.lit(0.0))
    return out.select(
        "tag", n.alias("impressions"), c.alias("clicks"),
        F.coalesce(smoothed_ctr(n, c, p0, cfg.prior_strength), F.lit(0.0)).alias("ctr"),
        (F.col("dwell_sec") / F.nullif(F.col("dwell_clicks"), F.lit(0.0))).alias("mean_dwell_sec"),
        F.coalesce(F.col("articles"), F.lit(0)).cast("long").alias("articles"),
    ).select(*TAG_STATS.fieldNames())


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    started = time.monotonic()
    cfg = config.index
    wh = Warehouse(spark, config)
    day = date.isoformat()
    _, end = day_bounds(date, config.time.timezone)
    articles = wh.read_partition("articles", day)
    wh.read_partition("events", day)  # the day itself must have been ingested
    window = [(date - dt.timedelta(days=k)).isoformat() for k in range(cfg.quality_window_days)]
    events = wh.read_partitions("events", window)
    window_present = [d for d in window if wh.has_partition("events", d)]
    with wh.scratch(f"index-{day}") as stage:
        engagement = stage(engagement_of(events, end, cfg), "engagement")
        p0, mu0 = priors(engagement)
        cfg, learned, ranker = ranking_inputs(wh, config, date, articles, events)
        learned = stage(learned, "learned") if learned is not None else None
        scored = stage(scored_articles(articles, engagement, end, cfg, p0, mu0, learned), "scored")
        wh.write_partition(tag_index(scored, cfg), "tag_index", day)
        wh.write_partition(tag_stats(articles, engagement, scored, cfg, p0), "tag_stats", day)
        eligible = scored.count()
    index_rows = wh.row_count("tag_index", day)
    tags_indexed = wh.read_partition("tag_index", day).select("tag").distinct().count()
    stats_rows = wh.row_count("tag_stats", day)
    report = {"step": NAME, "date": day, "status": "succeeded", "ranking": cfg.ranking, "ranker": ranker,
              "event_dates": sorted(window_present),
              "prior": {"ctr": p0, "mean_dwell_sec": mu0}, "articles_eligible": eligible,
              "rows_read": {"articles": wh.row_count("articles", day),
                            "events": sum(wh.row_count("events", d) for d in window_present)},
              "rows_written": {"tag_index": index_rows, "tag_stats": stats_rows}, "tags_indexed": tags_indexed,
              "seconds": round(time.monotonic() - started, 3), "config": config.to_dict()}
    wh.write_run_report(NAME, day, report)
    log.debug("index %s: %d eligible articles, %d tags, %d index rows, prior ctr %s, %.1fs", day, eligible,
             tags_indexed, index_rows, f"{p0:.4f}" if p0 is not None else "n/a", report["seconds"])
    return report


STEP = Step(NAME, run, summary="tag -> top-K articles index and tag statistics of D")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
