"""Export step: D's candidate tags per user, ranked by the models -> ``model_top_tags``, and
what is served on D+1 -> ``user_top_tags``: that ranking, or a baseline when the guard says so.

Candidates per user of D's users snapshot: the user's top export.candidate_tags profile tags
by the blend (jobs/transforms/tag_lists.py: 0.5 x share of the long total + 0.5 x share of
the short total), filled up to that count with the tags with the most decayed clicks in D's
tag_stats, so a user with an empty or tiny profile still gets tags to recall through.

For the multi-task score, each (user, tag) gets its features from
jobs/transforms/features.py, as the training triples do, for the day D+1 it is served on
(computed from D's tables), at the reference context features.reference_position (-1: no
position, for a feed that records none), request_index 0 and features.reference_hour. The
model current as of D (models/registry.py: the latest day's promotion up to D, so a re-run
or backfill of D never scores with a model trained on later days) scores them inside Spark
(mapInArrow; the model is loaded once per Python worker and applied to Arrow batches by
models/scoring.py, with the input conversion training uses): score = p_click x E[dwell |
click] in seconds. Each user keeps the top export.top_n by score (ties by tag).

Ranking (export.ranking):

- ``tag_model`` (default), when the tag_model step wrote D's ``user_tag_scores``: the
  model's tags join the candidates and each candidate scores 1 / (export.fusion_k +
  its rank by the user-tag model) (reciprocal-rank fusion; candidates the model did not
  rank come after its tags, in prior order), + export.mix_weight / (fusion_k + its rank
  by the mix heuristic of evaluate, whose tags join the candidates). With
  export.multitask_weight > 0 and a
  promoted multi-task model, + multitask_weight / (fusion_k + its rank by p_click x
  E[dwell | click]). model_version names the models used.
- ``multitask``, or ``tag_model`` without D's scores: p_click x E[dwell | click] by the
  current multi-task model.
- ``profile``, or no model at all: the blend itself; p_click and dwell_sec are null and
  model_version says ``none (profile blend)``; the run report says so too.

The guard (guard.*, jobs/transforms/guard.py): the ranking above is written to
``model_top_tags``; ``user_top_tags`` is the same rows unless, on the last guard.window_days
evaluated days, the model's ranking did worse on guard.metric than the best of
guard.baselines; then that baseline's lists, built as evaluate builds them, are served
(score 1 / rank, model_version ``guard: <baseline> served, not <model>``), and the run
report's ``guard`` says why. Evaluate keeps measuring ``model_top_tags`` (method ``model``),
so the model is served again once it wins.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from functools import reduce

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common.entry import Step
from jobs.common.inputs import feature_tables
from jobs.common.session import CO_PARTITIONED, spark_settings
from jobs.common.storage import Warehouse
from jobs.transforms.features import with_features
from jobs.transforms.guard import MODEL, Decision, decide, window
from jobs.transforms.tag_lists import (
    baseline,
    filled,
    global_tags,
    mix,
    ranked_tags,
    top_k_per_key,
)
from schemas.config import Config
from schemas.features import FeatureSpec, feature_spec
from schemas.tables import USER_TOP_TAGS

log = logging.getLogger(__name__)

NAME = "export"
TABLE = "user_top_tags"
MODEL_TABLE = "model_top_tags"
NO_MODEL = "none (profile blend)"
SCORED = "user_id string, tag string, prior double, p_click double, dwell_sec double, score double"


def candidates(profile: DataFrame, users: DataFrame, stats: DataFrame, count: int) -> DataFrame:
    """(user_id, tag, prior): ``count`` candidate tags per user; prior is the blend (profile
    tags) or minus the tag's global rank (fill-up tags), so that it orders them as listed."""
    personal = ranked_tags(profile, "blend", count, score_as="prior")
    return filled(personal, users, global_tags(stats, count), count, keep_others=True,
                  carry={"prior": lambda rank: -rank.cast("double")}).select("user_id", "tag", "prior")


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
    """Candidates as pairs of the day they are served on, at the reference context; a
    reference position of -1 is no position, which the feature builder encodes as training
    encodes an impression without one."""
    ref = config.features.reference_position
    position = (F.lit(None) if ref < 0 else F.lit(ref)).cast("int")
    return cands.select("user_id", "tag", "prior", position.alias("position"),
                        F.lit(0).alias("request_index"), F.lit(config.features.reference_hour).alias("hour"))


def fusion_ranks(cands: DataFrame, learned: DataFrame, mixed: DataFrame | None, top_m: int, count: int) -> DataFrame:
    """``cands`` (user_id, tag, prior) + the user-tag model's ranked tags ``learned`` (user_id,
    tag, rank) + mix's ``mixed`` (user_id, tag, rank, or None) -> (user_id, tag, prior,
    tm_rank, mix_rank):

    - every candidate and every tag the model ranked: tm_rank is the model's rank, or for
      the candidates it did not rank top_m + their order by prior (descending, then tag);
    - mix's other tags join with no prior and tm_rank count + 1;
    - mix_rank is mix's rank, count + 1 where mix did not rank the tag (or no mix).

    One shuffle: the three lists are gathered by user, and the merge per (user, tag) and the
    rank windows all run on that partitioning."""
    null = F.lit(None)
    parts = [cands.select("user_id", "tag", "prior", null.cast("int").alias("_tm"), null.cast("int").alias("_mix"),
                          F.lit(True).alias("_ranked")),
             learned.select("user_id", "tag", null.cast("double").alias("prior"), F.col("rank").alias("_tm"),
                            null.cast("int").alias("_mix"), F.lit(True).alias("_ranked"))]
    if mixed is not None:
        parts.append(mixed.select("user_id", "tag", null.cast("double").alias("prior"), null.cast("int").alias("_tm"),
                                  F.col("rank").alias("_mix"), F.lit(False).alias("_ranked")))
    merged = (reduce(DataFrame.unionByName, parts).repartition("user_id")
              .groupBy("user_id", "tag").agg(F.max("prior").alias("prior"), F.min("_tm").alias("_tm"),
                                             F.min("_mix").alias("_mix"), F.max("_ranked").alias("_ranked")))
    rest = Window.partitionBy("user_id", "_ranked", F.col("_tm").isNull()).orderBy(F.desc_nulls_last("prior"), "tag")
    tm_rank = F.when(F.col("_ranked"), F.coalesce(F.col("_tm"), F.lit(top_m) + F.row_number().over(rest)))
    return merged.select("user_id", "tag", "prior", F.coalesce(tm_rank, F.lit(count + 1)).alias("tm_rank"),
                         F.coalesce(F.col("_mix"), F.lit(count + 1)).alias("mix_rank"))


def fused(ranked: DataFrame, multitask: DataFrame | None, cfg) -> DataFrame:
    """SCORED rows: score = 1 / (fusion_k + tm_rank) + mix_weight / (fusion_k + mix_rank)
    [+ multitask_weight / (fusion_k + the rank by p_click x E[dwell | click])]:
    reciprocal-rank fusion, which needs no common scale."""
    base = (F.lit(1.0) / (F.lit(cfg.fusion_k) + F.col("tm_rank"))
            + F.lit(cfg.mix_weight) / (F.lit(cfg.fusion_k) + F.col("mix_rank")))
    if multitask is None:
        return ranked.select("user_id", "tag", "prior", F.lit(None).cast("double").alias("p_click"),
                             F.lit(None).cast("double").alias("dwell_sec"), base.alias("score"))
    order = Window.partitionBy("user_id").orderBy(F.desc("score"), "tag")
    mt = multitask.select("user_id", "tag", "p_click", "dwell_sec", F.row_number().over(order).alias("_mt"))
    both = ranked.join(mt, ["user_id", "tag"])
    return both.select("user_id", "tag", "prior", "p_click", "dwell_sec",
                       (base + F.lit(cfg.multitask_weight) / (F.lit(cfg.fusion_k) + F.col("_mt"))).alias("score"))


def multitask_scores(cands: DataFrame, wh: Warehouse, config: Config, date: dt.date, version: str) -> DataFrame:
    """SCORED rows of ``cands`` by the multi-task model ``version``, at the reference context
    of D+1, with features from D's tables."""
    spec = feature_spec(config)
    rows = with_features(at_reference_context(cands, config), feature_tables(wh, date + dt.timedelta(days=1)), config)
    return rows.select("user_id", "prior", *spec.columns).mapInArrow(
        score_batches(config.storage.warehouse, version, spec), SCORED)


def guard_decision(wh: Warehouse, config: Config, date: dt.date) -> Decision:
    """The guard's choice for D from the recall_eval partitions of the days before D."""
    g = config.guard
    if not g.enabled:
        return Decision(MODEL, "the guard is off (guard.enabled = false)", g.metric)
    evaluated = wh.read_partitions("recall_eval", window(wh.partitions("recall_eval"), date, g.max_age_days))
    rows = [] if evaluated is None else [r.asDict() for r in evaluated.where(F.col("metric") == g.metric).collect()]
    return decide(rows, g.metric, g.window_days, g.baselines)


def fallback(wh: Warehouse, config: Config, day: str, method: str, label: str) -> DataFrame:
    """USER_TOP_TAGS rows of the baseline ``method`` for the users of D's model_top_tags,
    ranked exactly as evaluate ranks that method (jobs/transforms/tag_lists.baseline); score
    1 / rank, p_click and dwell_sec null, model_version ``label``."""
    n, stats = config.export.top_n, wh.read_partition("tag_stats", day)
    users = wh.read_partition(MODEL_TABLE, day).select("user_id").distinct()
    ranked = baseline(method, wh.read_partition("user_tag_profile", day), stats, users,
                      global_tags(stats, n), n, config.evaluate.mix_click_weight,
                      config.evaluate.mix_global_tags)
    return ranked.select("user_id", F.col("rank").cast("int").alias("rank"), "tag",
                         F.lit(None).cast("double").alias("p_click"), F.lit(None).cast("double").alias("dwell_sec"),
                         (F.lit(1.0) / F.col("rank")).alias("score"), F.lit(label).alias("model_version"))


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    from models import registry

    started = time.monotonic()
    cfg = config.export
    wh = Warehouse(spark, config)
    day = date.isoformat()
    profile = wh.read_partition("user_tag_profile", day)
    users = wh.read_partition("users", day)
    stats = wh.read_partition("tag_stats", day)
    # The feature builder reads the candidates twice (the pairs, and their users for
    # match): kept, they are computed once.
    learned = (wh.read_partition("user_tag_scores", day)
               if cfg.ranking == "tag_model" and wh.has_partition("user_tag_scores", day) else None)
    cands = candidates(profile, users, stats, cfg.candidate_tags)
    if learned is not None:
        mixed = (mix(profile, stats, users.select("user_id").unionByName(profile.select("user_id")).distinct(),
                     cfg.candidate_tags, config.evaluate.mix_click_weight, config.evaluate.mix_global_tags)
                 if cfg.mix_weight > 0 else None)
        cands = fusion_ranks(cands, learned, mixed, config.tag_model.top_m, cfg.candidate_tags)
    cands = cands.persist(StorageLevel.MEMORY_AND_DISK)
    # The model current as of D, not the latest: a re-run of D must not score with a model
    # trained on D+1's triples, the clicks evaluate judges D by.
    version = registry.version_as_of(config.storage.warehouse, day) if cfg.ranking != "profile" else None
    learned_version = (learned.select("model_version").limit(1).collect() or [[None]])[0][0] if learned else None
    if learned is not None:
        with_mt = version is not None and cfg.multitask_weight > 0
        scored = fused(cands, multitask_scores(cands, wh, config, date, version) if with_mt else None, cfg)
        used = f"{learned_version} + {version}" if with_mt else learned_version
        parts = ["user-tag model"] + ([f"mix (weight {cfg.mix_weight:g})"] if cfg.mix_weight > 0 else []) + (
            [f"p_click x E[dwell | click] (weight {cfg.multitask_weight:g})"] if with_mt else [])
        ranked_by = "user-tag model score" if len(parts) == 1 else "reciprocal-rank fusion of " + ", ".join(parts)
    elif version is not None:
        scored, used, ranked_by = multitask_scores(cands, wh, config, date, version), version, "p_click x E[dwell | click]"
    else:
        scored, used, ranked_by = unscored(cands), NO_MODEL, "profile blend (no model)"
        log.warning("export %s: no user_tag_scores and no promoted model; tags ranked by the profile blend", day)
    try:
        with spark_settings(spark, CO_PARTITIONED):
            wh.write_partition(top_n(scored, cfg.top_n, used), MODEL_TABLE, day)
    finally:
        cands.unpersist()
    decision = guard_decision(wh, config, date)
    if decision.fell_back:
        log.warning("export %s: the guard serves %s instead of the model's ranking: %s", day, decision.serve,
                    decision.reason)
        ranked_by = f"{decision.serve} (the guard's fallback; the model ranked by {ranked_by})"
        used = f"guard: {decision.serve} served, not {used}"
        served = fallback(wh, config, day, decision.serve, used)
    else:
        served = wh.read_partition(MODEL_TABLE, day)
    wh.write_partition(served, TABLE, day)
    def count(t: str):
        return wh.read_partition(t, day).agg(F.count(F.lit(1)).alias("rows"),
                                             F.countDistinct("user_id").alias("users")).first()

    written = count(TABLE)  # model_top_tags holds the same rows unless the guard fell back
    counts = {MODEL_TABLE: count(MODEL_TABLE) if decision.fell_back else written, TABLE: written}
    report = {"step": NAME, "date": day, "status": "succeeded", "model_version": used, "ranked_by": ranked_by,
              "guard": decision.to_dict(), "rows_written": {t: c["rows"] for t, c in counts.items()},
              "users": written["users"], "seconds": round(time.monotonic() - started, 3),
              "config": config.to_dict()}
    wh.write_run_report(NAME, day, report)
    log.debug("export %s: %d users, %d rows, model %s, %.1fs", day, written["users"], written["rows"], used,
             report["seconds"])
    return report


STEP = Step(NAME, run, summary="top-N tags per user for D+1, scored by the current model")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
