"""Export step: D's profiles, scored by the ``current`` model -> ``user_top_tags`` (for D+1).

Candidates per user of D's users snapshot: the user's top export.candidate_tags profile tags
by the blend (jobs/transforms/tag_lists.py: 0.5 x share of the long total + 0.5 x share of
the short total), filled up to that count with the tags with the most decayed clicks in D's
tag_stats, so a user with an empty or tiny profile still gets tags to recall through.

Each (user, tag) gets its features from jobs/transforms/features.py, as the training triples do, for
the day D+1 it is served on (computed from D's tables), at the reference context
features.reference_position, request_index 0 and features.reference_hour. The current
model scores them inside Spark (mapInArrow; the model is loaded once per Python worker and
applied to Arrow batches by models/scoring.py, with the input conversion training uses):
score = p_click x E[dwell | click] in seconds. Each user keeps the top export.top_n by score (ties by tag).

Without a promoted model the tags are ranked by the blend itself, p_click and dwell_sec are
null, and model_version says ``none (profile blend)``; the run report says so too.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.entry import Step
from jobs.common.inputs import feature_tables
from jobs.common.storage import Warehouse
from jobs.transforms.features import with_features
from jobs.transforms.tag_lists import filled, global_list, global_tags, ranked_tags, top_k_per_key
from schemas.config import Config
from schemas.features import FeatureSpec, feature_spec
from schemas.tables import USER_TOP_TAGS

log = logging.getLogger(__name__)

NAME = "export"
TABLE = "user_top_tags"
NO_MODEL = "none (profile blend)"
SCORED = "user_id string, tag string, prior double, p_click double, dwell_sec double, score double"


def candidates(profile: DataFrame, users: DataFrame, stats: DataFrame, count: int) -> DataFrame:
    """(user_id, tag, prior): ``count`` candidate tags per user; prior is the blend (profile
    tags) or minus the tag's global rank (fill-up tags), so that it orders them as listed."""
    fallback = global_list(users, global_tags(stats, count)).withColumn("prior", -F.col("rank").cast("double"))
    personal = ranked_tags(profile, "blend", count, score_as="prior")
    return filled(personal, fallback, count, carry=("prior",)).select("user_id", "tag", "prior")


def score_batches(warehouse: str, version: str, spec: FeatureSpec, chunk: int = 8192):
    """A mapInArrow function: feature rows -> (user_id, tag, prior, p_click, dwell_sec, score),
    by models.scoring, ``chunk`` rows per predict call."""

    def score(batches):
        from models.scoring import load_cached, score_batch

        model, meta = load_cached(warehouse, version)  # once per Python worker
        for batch in batches:
            for start in range(0, batch.num_rows, chunk):
                yield score_batch(model, meta, batch.slice(start, chunk), spec)

    return score


def top_n(scored: DataFrame, n: int, version: str) -> DataFrame:
    return (top_k_per_key(scored, "user_id", [F.desc("score"), "tag"], n)
            .withColumn("model_version", F.lit(version)).select(*USER_TOP_TAGS.fieldNames()))


def unscored(cands: DataFrame) -> DataFrame:
    """Candidates ranked by their prior (the profile blend, then the global list): no model."""
    return cands.select("user_id", "tag", "prior", F.lit(None).cast("double").alias("p_click"),
                        F.lit(None).cast("double").alias("dwell_sec"), F.col("prior").alias("score"))


def at_reference_context(cands: DataFrame, config: Config) -> DataFrame:
    """Candidates as pairs of the day they are served on, at the reference context."""
    return cands.select("user_id", "tag", "prior", F.lit(config.features.reference_position).alias("position"),
                        F.lit(0).alias("request_index"), F.lit(config.features.reference_hour).alias("hour"))


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
        scored, used = unscored(cands), NO_MODEL
        log.warning("export %s: no promoted model; tags ranked by the profile blend", day)
    else:
        spec = feature_spec(config)
        # Served on D+1: its features come from D's tables, as training's come from the day before.
        rows = with_features(at_reference_context(cands, config), feature_tables(wh, date + dt.timedelta(days=1)),
                             config)
        scored = rows.select("user_id", "prior", *spec.columns).mapInArrow(
            score_batches(config.storage.warehouse, version, spec), SCORED)
        used = version
    try:
        wh.write_partition(top_n(scored, config.export.top_n, used), TABLE, day)
    finally:
        cands.unpersist()
    written = wh.read_partition(TABLE, day).agg(F.count(F.lit(1)).alias("rows"),
                                                 F.countDistinct("user_id").alias("users")).first()
    report = {"step": NAME, "date": day, "status": "succeeded", "model_version": used,
              "ranked_by": "p_click x E[dwell | click]" if version else "profile blend (no promoted model)",
              "rows_written": {TABLE: written["rows"]}, "users": written["users"],
              "seconds": round(time.monotonic() - started, 3), "config": config.to_dict()}
    wh.write_run_report(NAME, day, report)
    log.debug("export %s: %d users, %d rows, model %s, %.1fs", day, written["users"], written["rows"], used,
             report["seconds"])
    return report


STEP = Step(NAME, run, summary="top-N tags per user for D+1, scored by the current model")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
