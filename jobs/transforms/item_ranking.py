"""How the index ranks a tag's articles (``index.ranking``), its cold-start quota, and the
item popularity that every ranking is judged against. Pure DataFrame -> DataFrame functions.

Every ranking scores (tag, article) as ``a(article, tag) x value(article)``; ``value`` is:

- ``quality``: quality x freshness, the smoothed engagement rate relative to the average
  article (``quality`` below) times 2^(-age / index.freshness_half_life_days). It ignores how
  much an article is being shown and clicked;
- ``clicks``: the article's decayed clicks, each click counting 2^(-age /
  index.recent_half_life_days): the volume of clicks it is drawing now;
- ``exposure``: smoothed click-through rate x decayed impressions, both decayed with
  index.recent_half_life_days, the rate shrunk towards the window's by index.prior_strength
  pseudo-impressions: how much the feed is showing the article times how well it is clicked;
- ``learned``: the clicks a Poisson regression (Spark ML) expects the article to draw on the
  next day, from ``ranker_features``: decayed clicks and impressions at several half-lives,
  the smoothed click-through rate, age, newness and the popularity of its best tag. It is
  fitted on D-1's features (the partitions up to D-1, as of the end of D-1) with D's clicks
  as the label, and applied to D's features (partitions up to D) to rank for D+1: the same
  function computes both, and no feature reads a partition later than the day it describes.

Under ``clicks`` and ``exposure`` an article without a single impression in the window would
score zero, so a *new* article (first published or first shown within index.new_article_days
of the end of D) without history is given the mean value of the articles shown in the window:
it enters as an average article would (under ``quality`` the prior already does this: 1.0).

Cold-start quota: up to ``index.new_article_slots`` of each tag's ``index.top_k`` places go to
new articles first, ranked by tag weight x freshness, then article_id; the rest of the places go
to the best-scored other articles (the fresher first among equal scores). Every row keeps its own score, which the merge across a
user's tags uses (jobs/online/recall.py), and ranks are by score, then article_id.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.transforms.decay import DAY_SEC, age_seconds, decay
from schemas.config import INDEX_RANKINGS

RANKINGS = INDEX_RANKINGS
ENGAGEMENT = ("impressions", "clicks", "dwell_sec", "dwell_clicks", "recent_impressions", "recent_clicks")


def article_engagement(events: DataFrame, end: dt.datetime, quality_half_life_days: float,
                       recent_half_life_days: float) -> DataFrame:
    """(article_id, impressions, clicks, dwell_sec, dwell_clicks, recent_impressions,
    recent_clicks, first_shown): impressions, clicks and dwell decayed to ``end`` with
    ``quality_half_life_days``, the recent ones decayed with ``recent_half_life_days``, and
    the time of the article's first impression or click in ``events``."""
    age = age_seconds(F.col("event_time"), end.timestamp())
    d = decay(age, quality_half_life_days)
    is_click = F.col("event_type") == "click"
    has_dwell = is_click & F.col("dwell_ms").isNotNull()
    return (events.where(F.col("event_type").isin("impression", "click"))
            .groupBy("article_id")
            .agg(F.sum(F.when(F.col("event_type") == "impression", d).otherwise(0.0)).alias("impressions"),
                 F.sum(F.when(is_click, d).otherwise(0.0)).alias("clicks"),
                 F.sum(F.when(has_dwell, d * F.col("dwell_ms") / 1000.0).otherwise(0.0)).alias("dwell_sec"),
                 F.sum(F.when(has_dwell, d).otherwise(0.0)).alias("dwell_clicks"),
                 F.sum(F.when(F.col("event_type") == "impression", decay(age, recent_half_life_days))
                       .otherwise(0.0)).alias("recent_impressions"),
                 F.sum(F.when(is_click, decay(age, recent_half_life_days)).otherwise(0.0)).alias("recent_clicks"),
                 F.min("event_time").alias("first_shown")))


def smoothed_ctr(n: Column, c: Column, p0: float | Column | None, m: float) -> Column:
    """(clicks + m p0) / (impressions + m): m pseudo-impressions at the window's rate p0 (a
    number, or a column holding it)."""
    if p0 is None:
        return F.lit(None).cast("double")
    return F.coalesce((c + m * p0) / F.nullif(n + m, F.lit(0.0)), F.lit(p0))


def quality(n: Column, c: Column, s: Column, k: Column, p0: float | None, mu0: float | None, m: float) -> Column:
    """Engagement relative to the average article, shrunk towards 1.0 (jobs/index.py)."""
    q = F.lit(1.0)
    if p0:
        q = q * smoothed_ctr(n, c, p0, m) / p0
    if p0 and mu0:
        pseudo = m * p0
        q = q * F.coalesce((s + pseudo * mu0) / F.nullif(k + pseudo, F.lit(0.0)), F.lit(mu0)) / mu0
    return q


def is_new(age_sec: Column, first_shown: Column, end: dt.datetime, new_article_days: float) -> Column:
    """First published or first shown within ``new_article_days`` of ``end`` (never shown
    counts as new once published within that time)."""
    recent = F.lit(new_article_days * DAY_SEC)
    shown_age = age_seconds(first_shown, end.timestamp())
    return (age_sec <= recent) | (first_shown.isNotNull() & (shown_age <= recent))


def article_values(eligible: DataFrame, engagement: DataFrame, end: dt.datetime, ranking: str, *,
                   p0: float | None, mu0: float | None, prior_strength: float,
                   freshness_half_life_days: float, new_article_days: float,
                   learned: DataFrame | None = None) -> DataFrame:
    """(article_id, tags, quality, freshness, new, value) for the ``eligible`` articles
    (article_id, publish_time, tags) under ``ranking`` (module docstring); ``learned``
    (article_id, value) holds the ranker's values when ``ranking`` is "learned"."""
    if ranking not in RANKINGS:
        raise ValueError(f"index.ranking {ranking!r} is not one of {', '.join(RANKINGS)}")
    if (ranking == "learned") != (learned is not None):
        raise ValueError("index.ranking 'learned', and only it, takes its values from a fitted ranker")
    age = age_seconds(F.col("publish_time"), end.timestamp())
    e = engagement.alias("e")
    n, c, s, k, recent_n, recent_c = (F.coalesce(F.col(f"e.{x}"), F.lit(0.0)) for x in ENGAGEMENT)
    q = quality(n, c, s, k, p0, mu0, prior_strength)
    if learned is not None:
        eligible = eligible.join(learned.withColumnRenamed("value", "_learned"), "article_id", "left")
    if ranking == "exposure":  # the recent window's own click-through rate, one aggregate row
        rate = engagement.agg((F.sum("recent_clicks") / F.nullif(F.sum("recent_impressions"), F.lit(0.0)))
                              .alias("_p_recent"))
        eligible = eligible.crossJoin(F.broadcast(rate))
    value = {"quality": lambda: q * decay(age, freshness_half_life_days), "clicks": lambda: recent_c,
             "exposure": lambda: F.coalesce(smoothed_ctr(recent_n, recent_c, F.col("_p_recent"), prior_strength),
                                            F.lit(0.0)) * recent_n,
             "learned": lambda: F.coalesce(F.col("_learned"), F.lit(0.0))}[ranking]()
    rows = eligible.join(e, "article_id", "left").select(
        "article_id", "tags", q.alias("quality"), decay(age, freshness_half_life_days).alias("freshness"),
        is_new(age, F.col("e.first_shown"), end, new_article_days).alias("new"),
        (n > 0).alias("_shown"), value.alias("value"))
    if ranking in ("clicks", "exposure"):
        # A new article without history enters as the window's average shown article (one
        # aggregate row, broadcast: no window over every article in one partition).
        prior = rows.agg(F.coalesce(F.avg(F.when(F.col("_shown"), F.col("value"))), F.lit(0.0)).alias("_prior"))
        rows = (rows.crossJoin(F.broadcast(prior))
                .withColumn("value", F.when(F.col("new") & ~F.col("_shown"), F.col("_prior")).otherwise(F.col("value")))
                .drop("_prior"))
    return rows.drop("_shown")


def ranked_per_tag(values: DataFrame, top_k: int, new_article_slots: int) -> DataFrame:
    """(tag, rank, article_id, score, tag_weight, quality, freshness): each tag's ``top_k``
    articles, up to ``new_article_slots`` of them new ones by tag weight x freshness, the rest
    by score = tag_weight x value; ranked by score, then article_id."""
    rows = (values.select("article_id", "quality", "freshness", "new", "value", F.explode("tags").alias("t"))
            .select(F.col("t.tag").alias("tag"), "article_id", F.col("t.weight").alias("tag_weight"),
                    "quality", "freshness", "new", (F.col("t.weight") * F.col("value")).alias("score")))
    by_tag = Window.partitionBy("tag")
    reserved = F.lit(False)
    if new_article_slots > 0:
        # New rows first, numbered 1.. in the quota's order; the first slots are reserved.
        cold = F.row_number().over(by_tag.orderBy(F.desc("new"), F.desc(F.col("tag_weight") * F.col("freshness")),
                                                  "article_id"))
        reserved = F.col("new") & (cold <= new_article_slots)
    # Among equal scores (e.g. articles without a click under "clicks") the fresher is kept.
    place = F.row_number().over(by_tag.orderBy(F.desc("_reserved"), F.desc("score"), F.desc("freshness"),
                                               "article_id"))
    kept = rows.withColumn("_reserved", reserved).withColumn("_place", place).where(F.col("_place") <= top_k)
    rank = F.row_number().over(by_tag.orderBy(F.desc("score"), "article_id"))
    return kept.withColumn("rank", rank).select("tag", "rank", "article_id", "score", "tag_weight", "quality",
                                                "freshness")


def popular_items(engagement: DataFrame, k: int) -> DataFrame:
    """(rank, article_id, clicks): the ``k`` articles with the most recent (decayed) clicks,
    then by article_id: the item-popularity channel, one list for every user."""
    order = [F.desc("clicks"), "article_id"]
    top = (engagement.where(F.col("recent_clicks") > 0).select("article_id", F.col("recent_clicks").alias("clicks"))
           .orderBy(*order).limit(k))
    # k rows at most: numbered in one partition of their own.
    return top.withColumn("rank", F.row_number().over(Window.partitionBy(F.lit(0)).orderBy(*order))
                          ).select("rank", "article_id", "clicks")


FEATURE_HALF_LIVES = {"6h": 0.25, "1d": 1.0, "7d": 7.0}
RANKER_FEATURES = (*(f"log_clicks_{h}" for h in FEATURE_HALF_LIVES),
                   *(f"log_impressions_{h}" for h in FEATURE_HALF_LIVES),
                   "ctr_7d", "age_days", "new", "log_tag_clicks_7d")


def ranker_features(events: DataFrame, eligible: DataFrame, end: dt.datetime, prior_strength: float,
                    new_article_days: float) -> DataFrame:
    """(article_id, *RANKER_FEATURES) for the ``eligible`` articles (article_id, publish_time,
    tags) as of ``end``, from ``events`` (only partitions up to the day ending at ``end``).
    One definition for the rows the ranker is fitted on and the rows it scores."""
    age = age_seconds(F.col("event_time"), end.timestamp())
    is_click = F.col("event_type") == "click"
    shown = events.where(F.col("event_type").isin("impression", "click"))
    sums = [F.sum(F.when(is_click, decay(age, h)).otherwise(0.0)).alias(f"c_{n}") for n, h in FEATURE_HALF_LIVES.items()]
    sums += [F.sum(F.when(~is_click, decay(age, h)).otherwise(0.0)).alias(f"n_{n}")
             for n, h in FEATURE_HALF_LIVES.items()]
    per_article = shown.groupBy("article_id").agg(*sums, F.min("event_time").alias("first_shown"))
    rows = eligible.join(per_article, "article_id", "left").na.fill(
        0.0, [f"{x}_{n}" for x in "cn" for n in FEATURE_HALF_LIVES])
    rate = rows.agg((F.sum("c_7d") / F.nullif(F.sum("n_7d"), F.lit(0.0))).alias("_p0"))
    rows = rows.crossJoin(F.broadcast(rate))
    p0 = F.col("_p0")
    tag_clicks = (rows.select("c_7d", F.explode("tags.tag").alias("tag")).groupBy("tag")
                  .agg(F.sum("c_7d").alias("_tag_clicks")))
    best_tag = (rows.select("article_id", F.explode("tags.tag").alias("tag")).join(tag_clicks, "tag")
                .groupBy("article_id").agg(F.max("_tag_clicks").alias("_tag_clicks")))
    age_sec = age_seconds(F.col("publish_time"), end.timestamp())
    return rows.join(best_tag, "article_id", "left").select(
        "article_id",
        *(F.log1p(F.col(f"c_{n}")).alias(f"log_clicks_{n}") for n in FEATURE_HALF_LIVES),
        *(F.log1p(F.col(f"n_{n}")).alias(f"log_impressions_{n}") for n in FEATURE_HALF_LIVES),
        F.coalesce(smoothed_ctr(F.col("n_7d"), F.col("c_7d"), p0, prior_strength), F.lit(0.0)).alias("ctr_7d"),
        (age_sec / DAY_SEC).alias("age_days"),
        is_new(age_sec, F.col("first_shown"), end, new_article_days).cast("double").alias("new"),
        F.log1p(F.coalesce(F.col("_tag_clicks"), F.lit(0.0))).alias("log_tag_clicks_7d"))


def ranker_label(features: DataFrame, next_day_events: DataFrame) -> DataFrame:
    """``features`` with ``label``: the distinct users who clicked the article in
    ``next_day_events`` (0 if none), as recall counts a click: once per (user, article)."""
    clicks = (next_day_events.where(F.col("event_type") == "click").groupBy("article_id")
              .agg(F.countDistinct("user_id").cast("double").alias("label")))
    return features.join(clicks, "article_id", "left").na.fill(0.0, ["label"])


def fit_ranker(training: DataFrame, reg_param: float = 1e-3):
    """A Poisson regression of ``label`` on RANKER_FEATURES (Spark ML's IRLS, log link)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import GeneralizedLinearRegression

    return Pipeline(stages=[
        VectorAssembler(inputCols=list(RANKER_FEATURES), outputCol="_features"),
        GeneralizedLinearRegression(family="poisson", link="log", featuresCol="_features", labelCol="label",
                                    predictionCol="_expected", regParam=reg_param, maxIter=50)]).fit(training)


def ranker_values(model, features: DataFrame) -> DataFrame:
    """(article_id, value): the clicks ``model`` expects of each article of ``features``."""
    return model.transform(features).select("article_id", F.col("_expected").alias("value"))
