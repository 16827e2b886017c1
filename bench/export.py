"""Export throughput: users per second through `tagrecall export` (candidates, features from
the shared builder, the model scoring inside Spark, top N written), against a plain
``model.predict`` over the same feature rows in one process.

    python bench/export.py [--users 1m] [--candidates 50] [--sample-users 40k] [--keep DIR]
        [--no-multitask] [--no-tag-scores] [--tag-model [--driver-scoring-max-users N]] [--no-record]

Writes day D's tables for --users users directly in the contract's schemas (users with
four categorical features, 20 profile tags each out of 200, tag_stats, 3,000 articles and
their tag_index), trains a real model for one epoch on synthetic triples (bench/train.py's
generator) and promotes it, then times export.run for D with export.candidate_tags =
--candidates. The reference: the feature rows of the first --sample-users users (the same
builder, written to Parquet, loaded into memory before timing) scored by
``model.predict_on_batch`` over chunks of 8,192 rows (``predict()`` refuses string
arrays), inputs converted beforehand as training does; its rows/s divided by --candidates
gives users/s.
Prints both and their ratio (target: export >= 0.5 x predict). --no-multitask leaves this
part out (no multi-task model is trained).

With --tag-scores (on by default) the same run also writes D's ``user_tag_scores`` (what the
tag_model step scores: each user's top tag_model.top_m tags, here 50 distinct tags a user
with falling scores) and times export.run again with the default ranking, the user-tag
model's ranks fused with mix (export.ranking = "tag_model"), against the multi-task
export above (export.ranking = "multitask"): users/s of each and their ratio.

With --tag-model the scores are the tag_model step's own instead, against the same user-tag
model in plain Keras (target: the pipeline >= 0.5 x plain Keras):

- tag_examples of D-1 (training) and D (validation), written by the triples step's
  transform (jobs/transforms/user_fields.examples) for the first 20,000 users, 8
  impressions each a day, about one in four clicked; their fields come from D's tables
  (the step takes D-1's; the bench writes one day of tables);
- a new Spark session (fresh Python workers, as a `tagrecall tag-model` application has),
  then ``jobs.tag_model.run`` for D, timed whole and its training (models.utpm_train.train_day,
  tag_model.epochs = 2) timed apart: the scoring is the step less its training, that is the
  users' fields (jobs/transforms/user_fields.py), the scoring by the Python workers
  (mapInArrow: each imports TensorFlow and loads the model first) or, up to
  tag_model.driver_scoring_max_users users (--driver-scoring-max-users), by the driver,
  the write of user_tag_scores, the step's count of what it wrote and its run report;
- export.run with the default ranking over those scores;
- the reference: the fields of the first --sample-users users (the same builder, written to
  Parquet, loaded and converted to the model's inputs by the step's conversion,
  models.utpm_train.inputs, before timing) scored by ``model.predict_on_batch`` over chunks
  of 4,096 users (the step's chunk), after a warm-up call of each shape; and, for where the
  time goes, the step's scoring function itself (models.utpm_train.score_users: conversion,
  predict, top tag_model.top_m, interest, Arrow rows) over the same in-memory Arrow batches.

Prints users/s of the scoring, of the export and of both together, of the plain model, and
the ratio both together / plain (``tag_ratio``). The synthetic scores of --tag-scores are
then not written: the default export is timed once, over the step's scores.

Every run appends its figures to bench/results/export.jsonl; --no-record leaves it alone
(a check at a small size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

from record import append  # bench/ is on sys.path when a benchmark runs as a script
from sizes import parse_size

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DAY = dt.date(2026, 11, 10)
TAGS = 200
ARTICLES = 3000
EXAMPLE_USERS = 20_000   # users with tag_examples (--tag-model)
IMPRESSIONS = 8          # their impressions a day
TAG_CHUNK = 4096         # users per predict call, as jobs/tag_model.score_batches


def write_tables(spark, config, users: int) -> None:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.common.storage import Warehouse

    wh = Warehouse(spark, config)
    day = DAY.isoformat()
    ts = F.lit(dt.datetime(2026, 11, 10, 12, 0)).cast("timestamp")
    uid = F.format_string("u%08d", F.col("u"))
    ids = spark.range(users).withColumnRenamed("id", "u")
    feats = F.create_map(*[x for k, n in (("age", 6), ("gender", 3), ("city_tier", 4), ("device", 3))
                           for x in (F.lit(k), F.concat(F.lit("v"), (F.xxhash64("u", F.lit(k)) % n).cast("string")))])
    wh.write_partition(ids.select(uid.alias("user_id"), feats.alias("features"), ts.alias("updated_time")), "users", day)
    # 20 distinct tags per user: (7u + 13j) mod 200 for j < 20 (13 is prime to 200).
    prof = (ids.crossJoin(spark.range(20).withColumnRenamed("id", "j"))
            .select(uid.alias("user_id"), F.format_string("t%03d", (F.col("u") * 7 + F.col("j") * 13) % TAGS).alias("tag"),
                    (F.rand(1) * 5 / (F.col("j") + 1)).alias("long_weight"), (F.rand(2) * 2 / (F.col("j") + 1)).alias("short_weight"),
                    (F.rand(3) * 20).alias("impressions"), (F.rand(4) * 3).alias("clicks"), ts.alias("last_event_time")))
    wh.write_partition(prof.repartition(16, "user_id"), "user_tag_profile", day)
    tag = F.format_string("t%03d", F.col("id"))
    wh.write_partition(spark.range(TAGS).select(tag.alias("tag"), (1e5 / (F.col("id") + 1)).alias("impressions"),
                                                (1e4 / (F.col("id") + 1)).alias("clicks"), F.lit(0.1).alias("ctr"),
                                                F.lit(40.0).alias("mean_dwell_sec"), F.lit(45).cast("long").alias("articles")),
                       "tag_stats", day)
    art = spark.range(ARTICLES).select(F.format_string("a%06d", "id").alias("article_id"), ts.alias("publish_time"),
                                       ts.alias("updated_time"),
                                       F.array(*[F.struct(F.format_string("t%03d", (F.col("id") * m + k) % TAGS).alias("tag"),
                                                          F.lit(w).alias("weight"))
                                                 for m, k, w in ((1, 0, 0.6), (7, 3, 0.4))]).alias("tags"))
    wh.write_partition(art, "articles", day)
    index = (art.select("article_id", F.explode("tags").alias("t"))
             .select(F.col("t.tag").alias("tag"), "article_id", F.col("t.weight").alias("tag_weight"))
             .withColumn("rank", F.row_number().over(Window.partitionBy("tag").orderBy("article_id")))
             .select("tag", F.col("rank").cast("int").alias("rank"), "article_id", F.col("tag_weight").alias("score"),
                     "tag_weight", F.lit(1.0).alias("quality"), F.lit(1.0).alias("freshness")))
    wh.write_partition(index, "tag_index", day)


def write_tag_scores(spark, config, users: int, top_m: int) -> None:
    """D's user_tag_scores: tags (11u + 17j) mod 200 for j < top_m (17 is prime to 200), rank j + 1."""
    from pyspark.sql import functions as F

    from jobs.common.storage import Warehouse

    scores = (spark.range(users).withColumnRenamed("id", "u").crossJoin(spark.range(top_m).withColumnRenamed("id", "j"))
              .select(F.format_string("u%08d", F.col("u")).alias("user_id"), (F.col("j") + 1).cast("int").alias("rank"),
                      F.format_string("t%03d", (F.col("u") * 11 + F.col("j") * 17) % TAGS).alias("tag"),
                      (1.0 / (F.col("j") + 1)).alias("score"), (-F.col("j").cast("double")).alias("interest"),
                      F.lit("bench-utpm").alias("model_version")))
    Warehouse(spark, config).write_partition(scores.repartition(16, "user_id"), "user_tag_scores", DAY.isoformat())


def train_model(config, root: Path) -> str:
    """A real model (one epoch on synthetic triples of D-1, validated on D), promoted."""
    import importlib.util

    from models import train
    from schemas.features import feature_spec

    loader = importlib.util.spec_from_file_location("bench_train", Path(__file__).with_name("train.py"))
    bt = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bt)
    spec = feature_spec(config)
    for day, rows, seed in ((DAY - dt.timedelta(days=1), 200_000, 1), (DAY, 50_000, 2)):
        bt.write_triples(root / "warehouse" / "training_triples" / f"dt={day}", rows, spec, seed=seed)
    report = train.train_day(config, DAY)
    if not report.get("promoted"):
        raise SystemExit(f"the benchmark model was not promoted: {report.get('gate')}")
    return report["version"]


def write_tag_examples(spark, config, users: int) -> None:
    """tag_examples of D-1 and D for the first min(users, EXAMPLE_USERS) users, by the triples
    step's transform: IMPRESSIONS impressions a day each, impression k of user u showing an
    article whose first tag is the user's profile tag k ((7u + 13k) mod 200), clicked when a
    hash of (u, k, day) is 0 mod 4. The fields are the users' of D's tables."""
    from pyspark.sql import functions as F

    from jobs.common.storage import Warehouse
    from jobs.transforms.user_fields import examples, user_fields

    wh = Warehouse(spark, config)
    day, n = DAY.isoformat(), min(users, EXAMPLE_USERS)
    first = F.col("user_id") < f"u{n:08d}"
    fields = user_fields(wh.read_partition("user_tag_profile", day).where(first),
                         wh.read_partition("users", day).where(first), wh.read_partition("tag_stats", day), config)
    u, k = F.col("u"), F.col("k")
    article = (u * 7 + k * 13) % TAGS + TAGS * ((u + k) % (ARTICLES // TAGS))   # its first tag: (7u + 13k) mod 200
    for d in (DAY - dt.timedelta(days=1), DAY):
        imps = (spark.range(n).withColumnRenamed("id", "u").crossJoin(spark.range(IMPRESSIONS).withColumnRenamed("id", "k"))
                .select(F.format_string(f"e{d:%Y%m%d}-%08d-%02d", u, k).alias("event_id"),
                        F.format_string("u%08d", u).alias("user_id"), F.format_string("a%06d", article).alias("article_id"),
                        (F.xxhash64(u, k, F.lit(d.isoformat())) % 4 == 0).cast("int").alias("click")))
        wh.write_partition(examples(imps, wh.read_partition("articles", day), fields, config), "tag_examples",
                           d.isoformat())


def time_tag_step(spark, config) -> tuple[dict, float, float]:
    """(report, seconds, of which training) of ``jobs.tag_model.run`` for D, unchanged; its
    training (models.utpm_train.train_day) is timed by a wrapper around that function."""
    from jobs import tag_model
    from models import utpm_train

    train_day, training = utpm_train.train_day, []

    def timed_train_day(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return train_day(*args, **kwargs)
        finally:
            training.append(time.perf_counter() - t0)

    utpm_train.train_day = timed_train_day
    try:
        t0 = time.perf_counter()
        report = tag_model.run(spark, config, DAY)
        seconds = time.perf_counter() - t0
    finally:
        utpm_train.train_day = train_day
    if report.get("status") != "succeeded":
        raise SystemExit(f"the tag_model step did not score: {report}")
    return report, seconds, sum(training)


def tag_reference(path: Path, warehouse: str, version: str, top_m: int, popularity_weight: float) -> dict:
    """The user-tag model ``version`` over the user_fields rows at ``path``, in this process:
    {"users", "plain_s" (predict_on_batch, inputs converted beforehand), "score_users_s"
    (the step's function over Arrow batches)}, TAG_CHUNK users a call, each shape warmed up first."""
    import numpy as np
    import pyarrow.parquet as pq

    from models import registry
    from models.utpm_train import inputs, score_users

    table = pq.read_table(path).combine_chunks()
    model, meta = registry.load(warehouse, version)
    x = inputs(table, meta["user_features"], meta["fields"], meta["field_length"])
    batches = table.to_batches(max_chunksize=TAG_CHUNK)
    n = table.num_rows
    # Warm-up: one call per shape (a full chunk, the last one), each traced once untimed.
    for start in sorted({0, (n - 1) // TAG_CHUNK * TAG_CHUNK}):
        model.predict_on_batch({k: v[start:start + TAG_CHUNK] for k, v in x.items()})
    t0 = time.perf_counter()
    for start in range(0, n, TAG_CHUNK):
        out = model.predict_on_batch({k: v[start:start + TAG_CHUNK] for k, v in x.items()})
    plain_s = time.perf_counter() - t0
    assert np.isfinite(np.asarray(out["scores"])).all()
    t0 = time.perf_counter()
    rows = sum(score_users(model, meta, b, top_m, popularity_weight).num_rows for b in batches)
    score_users_s = time.perf_counter() - t0
    assert rows == n * min(top_m, len(meta["tags"])), rows
    return {"users": n, "plain_s": plain_s, "score_users_s": score_users_s}


def session(config):
    from jobs.common.session import build_session

    spark = build_session(config, "tagrecall-bench-export", set_master=True)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="1m")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--sample-users", default="40k")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--keep", help="build the warehouse here and keep it")
    ap.add_argument("--multitask", action=argparse.BooleanOptionalAction, default=True,
                    help="train a multi-task model and time export ranked by it against predict_on_batch")
    ap.add_argument("--tag-scores", action=argparse.BooleanOptionalAction, default=True,
                    help="also time export ranked by synthetic user-tag scores (the default ranking; "
                         "with --tag-model, the step's scores instead)")
    ap.add_argument("--tag-model", action=argparse.BooleanOptionalAction, default=False,
                    help="score with the tag_model step (a user-tag model trained on synthetic examples) and time "
                         "its scoring and the default export against the same model in plain Keras")
    ap.add_argument("--driver-scoring-max-users", type=int,
                    help="tag_model.driver_scoring_max_users (default: the configuration's; 0: the Python workers)")
    ap.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                    help="append the figures to bench/results/export.jsonl (--no-record: a check)")
    args = ap.parse_args()
    users, sample = parse_size(args.users), parse_size(args.sample_users)

    import dataclasses

    import numpy as np
    from pyspark.sql import functions as F

    from jobs import export
    from jobs.common.inputs import feature_tables
    from jobs.common.storage import Warehouse
    from jobs.transforms.features import with_features
    from jobs.transforms.user_fields import user_fields
    from models import registry
    from schemas.config import load_config
    from schemas.features import feature_spec

    root = Path(args.keep or tempfile.mkdtemp(prefix="tagrecall-bench-export-"))
    tag_settings = {"window_days": 2, "epochs": 2}
    if args.driver_scoring_max_users is not None:
        tag_settings["driver_scoring_max_users"] = args.driver_scoring_max_users
    config = load_config(overrides={
        "storage": {"warehouse": str(root / "warehouse")}, "spark": {"master": args.master, "driver_memory": "8g"},
        "export": {"candidate_tags": args.candidates, "ranking": "multitask"}, "model": {"epochs": 1, "window_days": 2},
        "tag_model": tag_settings})
    tag_config = config.replace(export=dataclasses.replace(config.export, ranking="tag_model"))
    spark = session(config)
    t0 = time.perf_counter()
    write_tables(spark, config, users)
    version = train_model(config, root) if args.multitask else None
    print(f"tables for {users:,} users" + (f" and a model ({version})" if version else "") +
          f" in {time.perf_counter() - t0:.0f}s", flush=True)

    export_sec = tag_sec = None
    if args.multitask:
        t0 = time.perf_counter()
        report = export.run(spark, config, DAY)
        export_sec = time.perf_counter() - t0
        assert report["users"] == users and report["model_version"] == version, report
        print(f"export: {users:,} users x {args.candidates} candidates in {export_sec:.1f}s = "
              f"{users / export_sec:,.0f} users/s", flush=True)
    if args.tag_scores and not args.tag_model:
        write_tag_scores(spark, config, users, config.tag_model.top_m)
        t0 = time.perf_counter()
        tag_report = export.run(spark, tag_config, DAY)
        tag_sec = time.perf_counter() - t0
        assert tag_report["users"] == users and tag_report["model_version"] == "bench-utpm", tag_report
        print(f"export ranked by the user-tag model (+ mix): {users:,} users in {tag_sec:.1f}s = "
              f"{users / tag_sec:,.0f} users/s", flush=True)

    tag = None
    if args.tag_model:
        write_tag_examples(spark, config, users)
        spark.stop()
        spark = session(config)   # fresh Python workers, as the step's own application has
        step, step_sec, train_sec = time_tag_step(spark, config)
        scoring_sec = step_sec - train_sec
        tag_version = step["model_version"]
        assert step["users"] == users, step
        in_driver = users <= config.tag_model.driver_scoring_max_users
        scored_by = "the driver" if in_driver else "the Python workers"
        print(f"tag_model step: {step['train_rows']:,} training impressions, {step['epochs']} epochs in "
              f"{train_sec:.1f}s; scoring {users:,} users by {scored_by} in {scoring_sec:.1f}s = "
              f"{users / scoring_sec:,.0f} users/s", flush=True)
        t0 = time.perf_counter()
        tag_report = export.run(spark, tag_config, DAY)
        tag_sec = time.perf_counter() - t0
        assert tag_report["users"] == users and tag_report["model_version"].startswith(tag_version), tag_report
        print(f"export ranked by the user-tag model (+ mix): {users:,} users in {tag_sec:.1f}s = "
              f"{users / tag_sec:,.0f} users/s", flush=True)
        tag = {"version": tag_version, "train_s": train_sec, "scoring_s": scoring_sec, "scored_by": scored_by}

    # The references: the same builders' rows for the first `sample` users, scored in one process.
    wh = Warehouse(spark, config)
    day = DAY.isoformat()
    first = F.col("user_id") < f"u{sample:08d}"
    rows_path, fields_path = root / "reference_rows", root / "reference_fields"
    if args.multitask:
        spec = feature_spec(config)
        cands = export.candidates(wh.read_partition("user_tag_profile", day).where(first),
                                  wh.read_partition("users", day).where(first),
                                  wh.read_partition("tag_stats", day), args.candidates)
        ctx = cands.select("user_id", "tag", F.lit(config.features.reference_position).alias("position"),
                           F.lit(0).alias("request_index"), F.lit(config.features.reference_hour).alias("hour"))
        with_features(ctx, feature_tables(wh, DAY + dt.timedelta(days=1)), config).select(*spec.columns).write.mode(
            "overwrite").parquet(str(rows_path))
    if tag:
        user_fields(wh.read_partition("user_tag_profile", day), wh.read_partition("users", day),
                    wh.read_partition("tag_stats", day), config).where(first).write.mode(
            "overwrite").parquet(str(fields_path))
    spark.stop()

    figures = {}
    if args.multitask:
        import pyarrow.parquet as pq

        from models.data import to_inputs

        inputs = to_inputs(pq.read_table(rows_path), spec)
        model, _ = registry.load(config.storage.warehouse, version)
        rows = len(inputs["tag"])
        # Keras' predict() cannot take object (string) arrays; predict_on_batch can, over the
        # same 8,192-row chunks the export scores.
        model.predict_on_batch({k: v[:8192] for k, v in inputs.items()})  # warm-up
        t0 = time.perf_counter()
        for start in range(0, rows, 8192):
            out = model.predict_on_batch({k: v[start:start + 8192] for k, v in inputs.items()})
        predict_sec = time.perf_counter() - t0
        assert np.isfinite(np.asarray(out["click"])).all()
        predict_users = rows / args.candidates / predict_sec
        print(f"model.predict_on_batch: {rows:,} rows ({rows // args.candidates:,} users) in {predict_sec:.1f}s = "
              f"{rows / predict_sec:,.0f} rows/s = {predict_users:,.0f} users/s")
        print(f"\nexport {users / export_sec:,.0f} users/s ({users * args.candidates / export_sec:,.0f} rows/s) vs plain "
              f"model.predict {predict_users:,.0f} users/s ({rows / predict_sec:,.0f} rows/s): "
              f"ratio {users / export_sec / predict_users:.2f} (target >= 0.5)")
        figures |= {"multitask_s": round(export_sec, 1), "multitask_users_per_s": round(users / export_sec),
                    "predict_users_per_s": round(predict_users), "ratio": round(users / export_sec / predict_users, 2)}
    if export_sec is not None and tag_sec is not None:
        print(f"export with the user-tag model {users / tag_sec:,.0f} users/s vs the multi-task export "
              f"{users / export_sec:,.0f} users/s: ratio {export_sec / tag_sec:.2f}")
    if tag_sec is not None and not tag:
        figures |= {"default_ranking_s": round(tag_sec, 1), "default_ranking_users_per_s": round(users / tag_sec)}
    if tag:
        ref = tag_reference(fields_path, config.storage.warehouse, tag["version"], config.tag_model.top_m,
                            config.tag_model.interest_popularity_weight)
        both = tag["scoring_s"] + tag_sec
        plain, in_process = ref["users"] / ref["plain_s"], ref["users"] / ref["score_users_s"]
        lines = [(f"tag_model step less its training ({tag['scored_by']})", users, tag["scoring_s"]),
                 ("export, default ranking (user-tag model + mix)", users, tag_sec),
                 ("both together", users, both),
                 (f"plain Keras predict_on_batch, {TAG_CHUNK:,} users a call", ref["users"], ref["plain_s"]),
                 ("models.utpm_train.score_users in one process", ref["users"], ref["score_users_s"])]
        print(f"\nthe user-tag model ({tag['version']}; training {tag['train_s']:.1f}s, not counted):")
        print(f"  {'path':<58}{'users':>11}{'seconds':>10}{'users/s':>11}")
        for label, n, sec in lines:
            print(f"  {label:<58}{n:>11,}{sec:>10.2f}{n / sec:>11,.0f}")
        print(f"  ratio both together / plain Keras: {users / both / plain:.3f} (target >= 0.5); "
              f"scoring alone / plain Keras: {users / tag['scoring_s'] / plain:.3f}")
        figures |= {"tag_train_s": round(tag["train_s"], 1), "tag_scoring_s": round(tag["scoring_s"], 1),
                    "tag_scoring_users_per_s": round(users / tag["scoring_s"]),
                    "default_export_s": round(tag_sec, 1), "default_export_users_per_s": round(users / tag_sec),
                    "tag_pipeline_users_per_s": round(users / both), "tag_plain_users_per_s": round(plain),
                    "tag_score_users_users_per_s": round(in_process),
                    "tag_ratio": round(users / both / plain, 3),
                    "tag_scoring_ratio": round(users / tag["scoring_s"] / plain, 3)}
    sizes = {"users": args.users, "candidates": args.candidates, "sample_users": args.sample_users}
    note = f"user-tag model scored by {tag['scored_by']}" if tag else ""
    append("export", sizes, figures, note, enabled=args.record)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
