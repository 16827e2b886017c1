"""Triples step: D's impressions x the impressed article's tags -> ``training_triples``.

One row per (impression on D) x (tag of the impressed article, from D's articles snapshot),
with labels ``click`` (1 when the user clicked that article in the same request, or on D
when requests are unknown) and ``dwell_sec`` (the click's dwell; null when not clicked or
unknown), the context (position, the request's index in the user's day, the hour in
time.timezone), and every feature of jobs/transforms/features.py computed from D-1's tables.

The same step writes ``tag_examples`` of D, the user-tag model's training rows: one per
impression of the triples, with its click, the article's tags and the user's fields from
D-1's profile and users (jobs/transforms/user_fields.py).

Without D-1's profile (the first day of data) there is nothing to describe D's impressions
with: the step writes nothing and reports ``skipped`` with the reason; training uses the
days that have triples.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common.entry import Step, skipped
from jobs.common.inputs import feature_tables
from jobs.common.session import CO_PARTITIONED, spark_settings
from jobs.common.storage import Warehouse
from jobs.transforms.features import with_features
from jobs.transforms.user_fields import examples, user_fields
from schemas.config import Config
from schemas.features import feature_spec
from schemas.tables import TRAINING_TRIPLES

log = logging.getLogger(__name__)

NAME = "triples"
TABLE = "training_triples"
EXAMPLES = "tag_examples"


def local_hour(ts: F.Column, timezone: str, session_timezone: str) -> F.Column:
    """The hour of instant ``ts`` on the wall clock of ``timezone``, whatever the session's zone."""
    return F.hour(F.from_utc_timestamp(F.to_utc_timestamp(ts, session_timezone), timezone))


def labelled_impressions(events: DataFrame, timezone: str, session_timezone: str) -> DataFrame:
    """(event_id, user_id, article_id, position, request_index, hour, click, dwell_sec)."""
    imps = events.where(F.col("event_type") == "impression").withColumn(
        "_request", F.coalesce("request_id", "event_id"))
    first = imps.groupBy("user_id", "_request").agg(F.min("event_time").alias("_t0"))
    order = Window.partitionBy("user_id").orderBy("_t0", "_request")
    req_index = first.withColumn("request_index", F.row_number().over(order) - 1).drop("_t0")
    # Clicks get their own column names: imps and clicks come from the same DataFrame, and
    # columns of a self-join referenced as df["col"] are ambiguous.
    clicks = (events.where(F.col("event_type") == "click")
              .groupBy(F.col("user_id").alias("_c_user"), F.col("article_id").alias("_c_article"),
                       F.col("request_id").alias("_c_request"))
              .agg(F.max("dwell_ms").alias("_dwell_ms"), F.lit(1).alias("_clicked")))
    on = ((F.col("user_id") == F.col("_c_user")) & (F.col("article_id") == F.col("_c_article"))
          & F.col("request_id").eqNullSafe(F.col("_c_request")))
    labelled = imps.join(clicks, on, "left").join(req_index, ["user_id", "_request"])
    return labelled.select(
        "event_id", "user_id", "article_id", "position", "request_index",
        local_hour(F.col("event_time"), timezone, session_timezone).alias("hour"),
        F.coalesce(F.col("_clicked"), F.lit(0)).alias("click"),
        (F.col("_dwell_ms") / 1000.0).alias("dwell_sec"))


def impressions(triples: DataFrame) -> DataFrame:
    """(event_id, user_id, article_id, click): one row per impression of the triples."""
    return triples.groupBy("event_id", "user_id", "article_id").agg(F.max("click").alias("click"))


def pairs_of(labelled: DataFrame, articles: DataFrame) -> DataFrame:
    tags = articles.select("article_id", F.explode("tags.tag").alias("tag"))
    return labelled.join(tags, "article_id")


def training_rows(labelled: DataFrame, articles: DataFrame, tables, config: Config) -> DataFrame:
    """The table's rows: labelled impressions x their article's tags, with every feature
    from ``tables`` (FeatureTables of D-1), key and label columns first."""
    rows = with_features(pairs_of(labelled, articles), tables, config)
    keys = TRAINING_TRIPLES.fieldNames()
    return rows.select(*keys, *[c for c in feature_spec(config).columns if c not in keys])


def skip_reason(spark: SparkSession, config: Config, date: dt.date) -> str | None:
    """The first day of data has no D-1 profile to describe D's impressions with."""
    prev = (date - dt.timedelta(days=1)).isoformat()
    if not Warehouse(spark, config).has_partition("user_tag_profile", prev):
        return (f"no user_tag_profile for {prev}: features of {date} are computed from {prev}'s tables "
                "(first day of data?)")
    return None


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    started = time.monotonic()
    wh = Warehouse(spark, config)
    day, prev = date.isoformat(), (date - dt.timedelta(days=1)).isoformat()
    events = wh.read_partition("events", day)
    articles = wh.read_partition("articles", day)
    # Without a previous profile the step has nothing to compute features from: training
    # uses the days that have triples, so the chain goes on.
    reason = skip_reason(spark, config, date)
    if reason:
        return skipped(config, NAME, date, reason, spark)
    report = {"step": NAME, "date": day, "config": config.to_dict()}
    session_tz = spark.conf.get("spark.sql.session.timeZone")
    labelled = labelled_impressions(events, config.time.timezone, session_tz)
    spec = feature_spec(config)
    tables = feature_tables(wh, date)
    with spark_settings(spark, CO_PARTITIONED):
        wh.write_partition(training_rows(labelled, articles, tables, config), TABLE, day)
    written = wh.read_partition(TABLE, day)
    before = user_fields(tables.profile, tables.users, tables.tag_stats, config)
    wh.write_partition(examples(impressions(written), articles, before, config), EXAMPLES, day)
    stats = written.agg(F.count(F.lit(1)).alias("rows"), F.sum("click").alias("clicks"),
                        F.countDistinct("event_id").alias("impressions")).first()
    n_examples = wh.row_count(EXAMPLES, day)
    report.update(status="succeeded", rows_written={TABLE: stats["rows"], EXAMPLES: n_examples}, impressions=stats["impressions"],
                  clicked_rows=stats["clicks"], features=spec.to_dict(), features_from=prev,
                  seconds=round(time.monotonic() - started, 3))
    wh.write_run_report(NAME, day, report)
    log.debug("triples %s: %d rows from %d impressions, %d clicked, %.1fs", day, stats["rows"],
             stats["impressions"], stats["clicks"] or 0, report["seconds"])
    return report


STEP = Step(NAME, run, skip_reason=skip_reason, summary="training triples of D: impressions x tags, labels, features of D-1")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
