"""Tag-model step: ``tagrecall tag-model --date D`` trains a user-tag profile model
(models/utpm.py) on the ``tag_examples`` of the window ending at D and writes
``user_tag_scores`` (partition D, for D+1): each user's top tag_model.top_m tags by the
learned score, each with its interest (the user's lift on it over the average user).

1. Training (models/utpm_train.py): the examples (written by the triples step, one per
   impression, the user's fields from the day before) of the tag_model.window_days days
   ending at D, D validating. The first days of data have no window: the step is skipped
   with the reason.
2. Scores: every user of D's users snapshot or profile, with fields from D's tables (the
   same definition, jobs/transforms/user_fields.py, as the examples'), scored by the new
   model inside Spark (mapInArrow, the model loaded once per Python worker), or, up to
   tag_model.driver_scoring_max_users users, by the same function in the driver, which
   has TensorFlow loaded already.

Export reads ``user_tag_scores`` of D when present (jobs/export.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.entry import Step, skipped
from jobs.common.storage import Warehouse
from jobs.transforms.user_fields import user_fields
from schemas.config import Config
from schemas.tables import USER_TAG_SCORES

log = logging.getLogger(__name__)

NAME = "tag_model"
TABLE = "user_tag_scores"
SCORED = "user_id string, rank int, tag string, score double, interest double"


# Users per predict call. Spark's Arrow batches (spark.sql.execution.arrow.maxRecordsPerBatch,
# 10,000 by default) are regrouped into chunks of CHUNK users and a partition's last, shorter
# chunk is padded to CHUNK for the network: every call has one shape, traced once per Python
# worker (a second shape costs a trace, 0.6-0.9 s on 2 cores; the padding at most one chunk's
# predict per partition).
CHUNK = 4096


def score_batches(warehouse: str, version: str, m: int, popularity_weight: float):
    """A mapInArrow function: user_fields rows -> each user's top ``m`` tags with their
    interest (models/utpm_train.py), CHUNK users a call."""

    def score(batches):
        from models.scoring import load_cached
        from models.utpm_train import chunks, score_users

        model, meta = load_cached(warehouse, version)  # once per Python worker
        for chunk in chunks(batches, CHUNK):
            yield score_users(model, meta, chunk, m, popularity_weight, rows=CHUNK)

    return score


def scores(spark: SparkSession, config: Config, fields: DataFrame, version: str, *, in_driver: bool) -> DataFrame:
    """``SCORED`` rows of every user of ``fields`` (user_fields) by the model ``version``:
    by Spark's Python workers, or, ``in_driver``, by the same function over the rows
    collected to the driver as Arrow (no worker imports TensorFlow or loads the model)."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    cfg = config.tag_model
    score = score_batches(config.storage.warehouse, version, cfg.top_m, cfg.interest_popularity_weight)
    by_workers = fields.mapInArrow(score, SCORED)
    if not in_driver:
        return by_workers
    batches = list(score(fields.toArrow().to_batches()))
    return spark.createDataFrame(pa.Table.from_batches(batches, schema=to_arrow_schema(by_workers.schema)))


def skip_reason(_spark, config: Config, date: dt.date) -> str | None:
    """Disabled, or no window of examples yet (the first days of data)."""
    from models import utpm_train

    if not config.tag_model.enabled:
        return "tag_model.enabled is false"
    return utpm_train.skip_reason(config, date)


def written_counts(wh: Warehouse, day: str, users: int, per_user: int) -> dict:
    """{"rows", "users"} of D's user_tag_scores as written. Each scored user has ``per_user``
    rows, and the scored users are the users snapshot's ``users`` (a snapshot has one row a
    user, and holds every user of the profile): when the rows counted from the files' Parquet
    footers (Warehouse.row_count, no scan) are ``users`` x ``per_user``, those are the
    figures; otherwise the table is read back and its distinct users counted, with a warning."""
    rows = wh.row_count(TABLE, day)
    if rows == users * per_user:
        return {"rows": rows, "users": users}
    log.warning("tag-model %s: %s rows written for %s users x %s tags: counting the written users", day,
                f"{rows:,}", f"{users:,}", per_user)
    got = wh.read_partition(TABLE, day).agg(F.count(F.lit(1)).alias("rows"),
                                            F.countDistinct("user_id").alias("users")).first()
    return {"rows": got["rows"], "users": got["users"]}


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    from models import utpm_train

    started = time.monotonic()
    reason = skip_reason(spark, config, date)
    if reason:
        return skipped(config, NAME, date, reason, spark)
    wh = Warehouse(spark, config)
    day = date.isoformat()
    report = {"step": NAME, "date": day, "config": config.to_dict()}
    result = utpm_train.train_day(config, date)
    version = result["version"]
    fields = user_fields(wh.read_partition("user_tag_profile", day), wh.read_partition("users", day),
                         wh.read_partition("tag_stats", day), config)
    # Every user of the profile is in the users snapshot (ingest refuses events of unknown users).
    users = wh.row_count("users", day)
    in_driver = users <= config.tag_model.driver_scoring_max_users
    scored = scores(spark, config, fields, version, in_driver=in_driver)
    wh.write_partition(scored.withColumn("model_version", F.lit(version)).select(*USER_TAG_SCORES.fieldNames()),
                       TABLE, day)
    written = written_counts(wh, day, users, min(config.tag_model.top_m, result["tags"]))
    report |= {"status": "succeeded", "model_version": version, "users": written["users"],
               "rows_written": {TABLE: written["rows"]},
               **{k: result[k] for k in ("loss", "tags", "train_rows", "train_days", "validation_loss", "epochs",
                                         "history")},
               "seconds": round(time.monotonic() - started, 3)}
    wh.write_run_report(NAME, day, report)
    return report


STEP = Step(NAME, run, skip_reason=skip_reason,
            summary="train the user-tag model on the examples ending at D and score every user's tags for D+1")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
