"""Tag-model step: ``tagrecall tag-model --date D`` -> ``tag_examples`` of D, a user-tag
profile model (models/utpm.py) trained on the window ending at D, and ``user_tag_scores``
(partition D, for D+1): each user's top tag_model.top_m tags by the learned score.

1. Examples of D: D's impressions (from D's training_triples: one per event, with its
   click), the article's tags from D's snapshot, and the user's fields from D-1's profile
   and users (jobs/transforms/user_fields.py).
2. Training (models/utpm_train.py): the examples of the tag_model.window_days days ending at
   D, D validating. The first days of data have no window: the step writes the examples and
   no scores, and says so.
3. Scores: every user of D's users snapshot or profile, with fields from D's tables (the
   same definition as the examples'), scored by the new model inside Spark (mapInArrow,
   the model loaded once per Python worker).

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
from jobs.transforms.user_fields import examples, user_fields
from schemas.config import Config
from schemas.tables import USER_TAG_SCORES

log = logging.getLogger(__name__)

NAME = "tag_model"
EXAMPLES = "tag_examples"
TABLE = "user_tag_scores"
SCORED = "user_id string, rank int, tag string, score double"


def impressions(triples: DataFrame) -> DataFrame:
    """(event_id, user_id, article_id, click): one row per impression of the triples."""
    return triples.groupBy("event_id", "user_id", "article_id").agg(F.max("click").alias("click"))


def score_batches(warehouse: str, version: str, m: int):
    """A mapInArrow function: user_fields rows -> each user's top ``m`` tags (models/utpm_train.py)."""

    def score(batches):
        from models.scoring import load_cached
        from models.utpm_train import score_users

        model, meta = load_cached(warehouse, version)  # once per Python worker
        for batch in batches:
            for start in range(0, batch.num_rows, 4096):
                yield score_users(model, meta, batch.slice(start, 4096), m)

    return score


def skip_reason(spark: SparkSession, config: Config, date: dt.date) -> str | None:
    if not config.tag_model.enabled:
        return "tag_model.enabled is false"
    wh, prev = Warehouse(spark, config), (date - dt.timedelta(days=1)).isoformat()
    if not wh.has_partition("training_triples", date.isoformat()):
        return f"no training_triples for {date}: run `tagrecall triples --date {date}` (first day of data?)"
    if not wh.has_partition("user_tag_profile", prev):
        return f"no user_tag_profile for {prev}: the examples of {date} describe users by {prev}'s tables"
    return None


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    from models import utpm_train

    started = time.monotonic()
    reason = skip_reason(spark, config, date)
    if reason:
        return skipped(config, NAME, date, reason, spark)
    wh = Warehouse(spark, config)
    day, prev = date.isoformat(), (date - dt.timedelta(days=1)).isoformat()
    before = user_fields(wh.read_partition("user_tag_profile", prev), wh.read_partition("users", prev), config)
    wh.write_partition(examples(impressions(wh.read_partition("training_triples", day)),
                                wh.read_partition("articles", day), before, config), EXAMPLES, day)
    n_examples = wh.read_partition(EXAMPLES, day).count()
    report = {"step": NAME, "date": day, "rows_written": {EXAMPLES: n_examples}, "config": config.to_dict()}
    why = utpm_train.skip_reason(config, date)
    if why:
        report |= {"status": "succeeded", "trained": False, "reason": why,
                   "seconds": round(time.monotonic() - started, 3)}
        wh.write_run_report(NAME, day, report)
        log.info("tag-model %s: %d examples written; no model yet: %s", day, n_examples, why)
        return report
    result = utpm_train.train_day(config, date)
    version = result["version"]
    fields = user_fields(wh.read_partition("user_tag_profile", day), wh.read_partition("users", day), config)
    scored = fields.mapInArrow(score_batches(config.storage.warehouse, version, config.tag_model.top_m), SCORED)
    wh.write_partition(scored.withColumn("model_version", F.lit(version)).select(*USER_TAG_SCORES.fieldNames()),
                       TABLE, day)
    written = wh.read_partition(TABLE, day).agg(F.count(F.lit(1)).alias("rows"),
                                                 F.countDistinct("user_id").alias("users")).first()
    report |= {"status": "succeeded", "trained": True, "model_version": version, "users": written["users"],
               "rows_written": {EXAMPLES: n_examples, TABLE: written["rows"]},
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
