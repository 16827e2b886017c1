"""Index step: ``articles`` of D and a trailing window of ``events`` -> ``tag_index`` and ``tag_stats``.

For each article of D's snapshot published no later than the end T_D of D and at most
index.max_age_days before it:

    score(tag, article) = a(article, tag) x quality(article) x freshness(article)

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
exactly the prior, 1.0, not zero: new articles enter the index on the day they are
published, ranked by tag weight and freshness (the cold-start path of explicit recall).

Each tag keeps its top index.top_k articles; ties in score are broken by article_id, so
ranks are deterministic. ``tag_stats`` has, per tag of D's snapshot, the decayed
impressions and clicks of articles carrying it (unweighted), its click-through rate
smoothed the same way, its mean dwell per click, and the number of indexable articles.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.dates import day_bounds
from jobs.common.entry import Step
from jobs.common.storage import Warehouse
from jobs.transforms.decay import DAY_SEC, age_seconds, decay
from jobs.transforms.tag_lists import top_k_per_key
from schemas.config import Config, IndexConfig
from schemas.tables import TAG_INDEX, TAG_STATS

log = logging.getLogger(__name__)

NAME = "index"


def article_engagement(events: DataFrame, end: dt.datetime, cfg: IndexConfig) -> DataFrame:
    """(article_id, impressions, clicks, dwell_sec, dwell_clicks), decayed to ``end``."""
    d = decay(age_seconds(F.col("event_time"), end.timestamp()), cfg.quality_half_life_days)
    is_click = F.col("event_type") == "click"
    has_dwell = is_click & F.col("dwell_ms").isNotNull()
    return (events.where(F.col("event_type").isin("impression", "click"))
            .groupBy("article_id")
            .agg(F.sum(F.when(F.col("event_type") == "impression", d).otherwise(0.0)).alias("impressions"),
                 F.sum(F.when(is_click, d).otherwise(0.0)).alias("clicks"),
                 F.sum(F.when(has_dwell, d * F.col("dwell_ms") / 1000.0).otherwise(0.0)).alias("dwell_sec"),
                 F.sum(F.when(has_dwell, d).otherwise(0.0)).alias("dwell_clicks")))


def priors(engagement: DataFrame) -> tuple[float | None, float | None]:
    """The window's global click-through rate and mean dwell per click (None when undefined)."""
    row = engagement.agg(F.sum("impressions").alias("n"), F.sum("clicks").alias("c"),
                         F.sum("dwell_sec").alias("s"), F.sum("dwell_clicks").alias("k")).first()
    p0 = row["c"] / row["n"] if row["n"] else None
    mu0 = row["s"] / row["k"] if row["k"] else None
    return p0, mu0


def smoothed_ctr(n: Column, c: Column, p0: float | None, m: float) -> Column:
    if p0 is None:
        return F.lit(None).cast("double")
    return F.coalesce((c + m * p0) / F.nullif(n + m, F.lit(0.0)), F.lit(p0))


def quality(n: Column, c: Column, s: Column, k: Column, p0: float | None, mu0: float | None, m: float) -> Column:
    """Engagement relative to the average article, shrunk towards 1.0 (module docstring)."""
    q = F.lit(1.0)
    if p0:
        q = q * smoothed_ctr(n, c, p0, m) / p0
    if p0 and mu0:
        pseudo = m * p0
        q = q * F.coalesce((s + pseudo * mu0) / F.nullif(k + pseudo, F.lit(0.0)), F.lit(mu0)) / mu0
    return q


def scored_articles(articles: DataFrame, engagement: DataFrame, end: dt.datetime, cfg: IndexConfig,
                    p0: float | None, mu0: float | None) -> DataFrame:
    """(article_id, tags, quality, freshness) for the articles eligible on the day ending ``end``."""
    age_sec = age_seconds(F.col("publish_time"), end.timestamp())
    eligible = articles.where((age_sec > 0) & (age_sec <= cfg.max_age_days * DAY_SEC))
    e = engagement.alias("e")
    joined = eligible.join(e, "article_id", "left")
    n, c, s, k = (F.coalesce(F.col(f"e.{x}"), F.lit(0.0)) for x in ("impressions", "clicks", "dwell_sec", "dwell_clicks"))
    return joined.select("article_id", "tags",
                         quality(n, c, s, k, p0, mu0, cfg.prior_strength).alias("quality"),
                         decay(age_sec, cfg.freshness_half_life_days).alias("freshness"))


def tag_index(scored: DataFrame, cfg: IndexConfig) -> DataFrame:
    exploded = scored.select("article_id", "quality", "freshness", F.explode("tags").alias("t"))
    rows = exploded.select(F.col("t.tag").alias("tag"), "article_id", F.col("t.weight").alias("tag_weight"),
                           "quality", "freshness")
    rows = rows.withColumn("score", F.col("tag_weight") * F.col("quality") * F.col("freshness"))
    ranked = top_k_per_key(rows, "tag", [F.desc("score"), "article_id"], cfg.top_k)
    return ranked.select(*TAG_INDEX.fieldNames())


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
        engagement = stage(article_engagement(events, end, cfg), "engagement")
        p0, mu0 = priors(engagement)
        scored = stage(scored_articles(articles, engagement, end, cfg, p0, mu0), "scored")
        wh.write_partition(tag_index(scored, cfg), "tag_index", day)
        wh.write_partition(tag_stats(articles, engagement, scored, cfg, p0), "tag_stats", day)
        eligible = scored.count()
    index_rows = wh.row_count("tag_index", day)
    tags_indexed = wh.read_partition("tag_index", day).select("tag").distinct().count()
    stats_rows = wh.row_count("tag_stats", day)
    report = {"step": NAME, "date": day, "status": "succeeded", "event_dates": sorted(window_present),
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
