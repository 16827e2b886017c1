"""Export step: D's profiles, scored by the ``current`` model -> ``user_top_tags`` (for D+1).

Candidates per user of D's users snapshot: the user's top export.candidate_tags profile tags
by the blend of profile-eval (0.5 x share of the long total + 0.5 x share of the short
total), filled up to that count with the tags with the most decayed clicks in D's
tag_stats, so a user with an empty or tiny profile still gets tags to recall through.

Each (user, tag) gets its features from jobs/features.py, as the training triples do, for
the day D+1 it is served on (computed from D's tables), at the reference context
features.reference_position, request_index 0 and features.reference_hour. The current
model scores them inside Spark (mapInArrow; the model is loaded once per Python worker and
applied to Arrow batches, converted by the function training uses): score = p_click x
E[dwell | click] in seconds. Each user keeps the top export.top_n by score (ties by tag).

Without a promoted model the tags are ranked by the blend itself, p_click and dwell_sec are
null, and model_version says ``none (profile blend)``; the run report says so too.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import features, profile_eval
from jobs.common.config import Config
from jobs.common.storage import Warehouse
from schemas.tables import USER_TOP_TAGS

log = logging.getLogger(__name__)

STEP = "export"
TABLE = "user_top_tags"
NO_MODEL = "none (profile blend)"
SCORED = "user_id string, tag string, prior double, p_click double, dwell_sec double, score double"


def global_tags(stats: DataFrame, count: int) -> list[str]:
    """The ``count`` tags with the most decayed clicks in tag_stats (ties by tag): the list
    for users without enough profile tags, and for users unknown to D's snapshot."""
    return [r["tag"] for r in stats.orderBy(F.desc("clicks"), "tag").limit(count).select("tag").collect()]


def candidates(profile: DataFrame, users: DataFrame, stats: DataFrame, count: int) -> DataFrame:
    """(user_id, tag, prior): ``count`` candidate tags per user; prior is the blend (profile
    tags) or minus the tag's global rank (fill-up tags), so that it orders them as listed."""
    fallback = profile_eval.global_list(users, global_tags(stats, count)).withColumn(
        "prior", -F.col("rank").cast("double"))
    personal = profile_eval.ranked_tags(profile, "blend", count, score_as="prior")
    return profile_eval.filled(personal, fallback, count, carry=("prior",)).select("user_id", "tag", "prior")


_MODELS: dict[str, tuple] = {}


def _model(warehouse: str, version: str):
    """The model, loaded once per Python worker process and kept for its later tasks."""
    key = f"{warehouse}::{version}"
    if key not in _MODELS:
        from models import registry

        _MODELS[key] = registry.load(warehouse, version)
    return _MODELS[key]


def score_batches(warehouse: str, version: str, spec: features.FeatureSpec, chunk: int = 8192):
    """A mapInArrow function: feature rows -> (user_id, tag, prior, p_click, dwell_sec, score).
    The model inputs come from models.data.to_inputs, the conversion training uses."""

    def score(batches):
        import numpy as np
        import pyarrow as pa

        from models.data import to_inputs
        from models.train import dwell_seconds

        model, meta = _model(warehouse, version)
        for batch in batches:
            for start in range(0, batch.num_rows, chunk):
                part = batch.slice(start, chunk)
                out = model.predict_on_batch(to_inputs(part, spec))
                p = np.asarray(out["click"], dtype="float64").ravel()
                d = dwell_seconds(np.asarray(out["dwell"], dtype="float64").ravel(), meta["dwell_smearing"]) \
                    if "dwell" in out else np.ones_like(p)
                yield pa.RecordBatch.from_arrays(
                    [part.column("user_id"), part.column("tag"), part.column("prior"), pa.array(p), pa.array(d),
                     pa.array(p * d)], names=["user_id", "tag", "prior", "p_click", "dwell_sec", "score"])

    return score


def top_n(scored: DataFrame, n: int, version: str) -> DataFrame:
    order = Window.partitionBy("user_id").orderBy(F.desc("score"), "tag")
    return (scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= n)
            .withColumn("model_version", F.lit(version)).select(*USER_TOP_TAGS.fieldNames()))


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    from models import registry

    started = time.monotonic()
    wh = Warehouse(spark, config)
    day = date.isoformat()
    profile = wh.read_partition("user_tag_profile", day)
    users = wh.read_partition("users", day)
    stats = wh.read_partition("tag_stats", day)
    # The feature builder reads the candidates twice (the pairs, and their users for
    # match): kept, they are computed once.
    cands = candidates(profile, users, stats, config.export.candidate_tags).persist(StorageLevel.MEMORY_AND_DISK)
    version = registry.current_version(config.storage.warehouse)
    if version is None:
        scored = cands.select("user_id", "tag", "prior", F.lit(None).cast("double").alias("p_click"),
                              F.lit(None).cast("double").alias("dwell_sec"), F.col("prior").alias("score"))
        used = NO_MODEL
        log.warning("export %s: no promoted model; tags ranked by the profile blend", day)
    else:
        spec = features.feature_spec(config)
        ctx = cands.select("user_id", "tag", "prior",
                           F.lit(config.features.reference_position).alias("position"),
                           F.lit(0).alias("request_index"), F.lit(config.features.reference_hour).alias("hour"))
        rows = features.build(wh, config, date + dt.timedelta(days=1), ctx)
        scored = rows.select("user_id", "prior", *spec.columns).mapInArrow(
            score_batches(config.storage.warehouse, version, spec), SCORED)
        used = version
    try:
        wh.write_partition(top_n(scored, config.export.top_n, used), TABLE, day)
    finally:
        cands.unpersist()
    written = wh.read_partition(TABLE, day).agg(F.count(F.lit(1)).alias("rows"),
                                                 F.countDistinct("user_id").alias("users")).first()
    report = {"step": STEP, "date": day, "status": "succeeded", "model_version": used,
              "ranked_by": "p_click x E[dwell | click]" if version else "profile blend (no promoted model)",
              "rows_written": {TABLE: written["rows"]}, "users": written["users"],
              "seconds": round(time.monotonic() - started, 3), "config": config.to_dict()}
    wh.write_run_report(STEP, day, report)
    log.info("export %s: %d users, %d rows, model %s, %.1fs", day, written["users"], written["rows"], used,
             report["seconds"])
    return report


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: ``spark-submit jobs/export.py --date D``."""
    from jobs.cli import step_main

    return step_main(STEP, argv)


if __name__ == "__main__":
    raise SystemExit(main())
