"""Triples step: D's impressions x the impressed article's tags -> ``training_triples``.

One row per (impression on D) x (tag of the impressed article, from D's articles snapshot),
with labels ``click`` (1 when the user clicked that article in the same request, or on D
when requests are unknown) and ``dwell_sec`` (the click's dwell; null when not clicked or
unknown), the context (position, the request's index in the user's day, the hour in
time.timezone), and every feature of jobs/features.py computed from D-1's tables.

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

from jobs import features
from jobs.common.config import Config
from jobs.common.storage import Warehouse
from schemas.tables import TRAINING_TRIPLES

log = logging.getLogger(__name__)

STEP = "triples"
TABLE = "training_triples"


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


def pairs_of(labelled: DataFrame, articles: DataFrame) -> DataFrame:
    tags = articles.select("article_id", F.explode("tags.tag").alias("tag"))
    return labelled.join(tags, "article_id")


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    started = time.monotonic()
    wh = Warehouse(spark, config)
    day, prev = date.isoformat(), (date - dt.timedelta(days=1)).isoformat()
    events = wh.read_partition("events", day)
    articles = wh.read_partition("articles", day)
    report = {"step": STEP, "date": day, "config": config.to_dict()}
    if not wh.has_partition("user_tag_profile", prev):
        report.update(status="skipped", reason=f"no user_tag_profile for {prev}: features of {day} are "
                                               f"computed from {prev}'s tables (first day of data?)",
                      seconds=round(time.monotonic() - started, 3))
        wh.write_run_report(STEP, day, report)
        log.warning("triples %s: skipped, %s", day, report["reason"])
        return report
    session_tz = spark.conf.get("spark.sql.session.timeZone")
    labelled = labelled_impressions(events, config.time.timezone, session_tz)
    rows = features.build(wh, config, date, pairs_of(labelled, articles))
    spec = features.feature_spec(config)
    keys = TRAINING_TRIPLES.fieldNames()
    ordered = rows.select(*keys, *[c for c in spec.columns if c not in keys])
    wh.write_partition(ordered, TABLE, day)
    written = wh.read_partition(TABLE, day)
    stats = written.agg(F.count(F.lit(1)).alias("rows"), F.sum("click").alias("clicks"),
                        F.countDistinct("event_id").alias("impressions")).first()
    report.update(status="succeeded", rows_written={TABLE: stats["rows"]}, impressions=stats["impressions"],
                  clicked_rows=stats["clicks"], features=spec.to_dict(), features_from=prev,
                  seconds=round(time.monotonic() - started, 3))
    wh.write_run_report(STEP, day, report)
    log.info("triples %s: %d rows from %d impressions, %d clicked, %.1fs", day, stats["rows"],
             stats["impressions"], stats["clicks"] or 0, report["seconds"])
    return report


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: ``spark-submit jobs/triples.py --date D``."""
    from jobs.cli import step_main

    return step_main(STEP, argv)


if __name__ == "__main__":
    raise SystemExit(main())
