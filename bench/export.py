"""Export throughput: users per second through `tagrecall export` (candidates, features from
the shared builder, the model scoring inside Spark, top N written), against a plain
``model.predict`` over the same feature rows in one process.

    python bench/export.py [--users 1m] [--candidates 50] [--sample-users 40k] [--keep DIR]

Writes day D's tables for --users users directly in the contract's schemas (users with
four categorical features, 20 profile tags each out of 200, tag_stats, 3,000 articles and
their tag_index), trains a real model for one epoch on synthetic triples (bench/train.py's
generator) and promotes it, then times export.run for D with export.candidate_tags =
--candidates. The reference: the feature rows of the first --sample-users users (the same
builder, written to Parquet, loaded into memory before timing) scored by
``model.predict_on_batch`` over chunks of 8,192 rows (``predict()`` refuses string
arrays), inputs converted beforehand as training does; its rows/s divided by --candidates
gives users/s.
Prints both and their ratio (target: export >= 0.5 x predict).

With --tag-scores (on by default) the same run also writes D's ``user_tag_scores`` (what the
tag_model step scores: each user's top tag_model.top_m tags, here 50 distinct tags a user
with falling scores) and times export.run again with the default ranking, the user-tag
model's ranks fused with mix (export.ranking = "tag_model"), against the multi-task
export above (export.ranking = "multitask"): users/s of each and their ratio.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="1m")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--sample-users", default="40k")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--keep", help="build the warehouse here and keep it")
    ap.add_argument("--tag-scores", action=argparse.BooleanOptionalAction, default=True,
                    help="also time export ranked by the user-tag model's scores (the default ranking)")
    args = ap.parse_args()
    users, sample = parse_size(args.users), parse_size(args.sample_users)

    import numpy as np

    from jobs import export
    from jobs.common.inputs import feature_tables
    from jobs.common.session import build_session
    from jobs.common.storage import Warehouse
    from jobs.transforms.features import with_features
    from models import registry
    from schemas.config import load_config
    from schemas.features import feature_spec

    root = Path(args.keep or tempfile.mkdtemp(prefix="tagrecall-bench-export-"))
    config = load_config(overrides={
        "storage": {"warehouse": str(root / "warehouse")}, "spark": {"master": args.master, "driver_memory": "8g"},
        "export": {"candidate_tags": args.candidates, "ranking": "multitask"}, "model": {"epochs": 1, "window_days": 2}})
    spark = build_session(config, "tagrecall-bench-export", set_master=True)
    spark.sparkContext.setLogLevel("ERROR")
    t0 = time.perf_counter()
    write_tables(spark, config, users)
    version = train_model(config, root)
    print(f"tables for {users:,} users and a model ({version}) in {time.perf_counter() - t0:.0f}s", flush=True)

    t0 = time.perf_counter()
    report = export.run(spark, config, DAY)
    export_sec = time.perf_counter() - t0
    assert report["users"] == users and report["model_version"] == version, report
    print(f"export: {users:,} users x {args.candidates} candidates in {export_sec:.1f}s = "
          f"{users / export_sec:,.0f} users/s", flush=True)
    tag_sec = None
    if args.tag_scores:
        import dataclasses

        write_tag_scores(spark, config, users, config.tag_model.top_m)
        tag_config = config.replace(export=dataclasses.replace(config.export, ranking="tag_model"))
        t0 = time.perf_counter()
        tag_report = export.run(spark, tag_config, DAY)
        tag_sec = time.perf_counter() - t0
        assert tag_report["users"] == users and tag_report["model_version"] == "bench-utpm", tag_report
        print(f"export ranked by the user-tag model (+ mix): {users:,} users in {tag_sec:.1f}s = "
              f"{users / tag_sec:,.0f} users/s", flush=True)

    # The reference: the same builder's rows for the first `sample` users, scored in one process.
    from pyspark.sql import functions as F

    wh = Warehouse(spark, config)
    spec = feature_spec(config)
    first = F.col("user_id") < f"u{sample:08d}"
    cands = export.candidates(wh.read_partition("user_tag_profile", DAY.isoformat()).where(first),
                              wh.read_partition("users", DAY.isoformat()).where(first),
                              wh.read_partition("tag_stats", DAY.isoformat()), args.candidates)
    ctx = cands.select("user_id", "tag", F.lit(config.features.reference_position).alias("position"),
                       F.lit(0).alias("request_index"), F.lit(config.features.reference_hour).alias("hour"))
    rows_path = root / "reference_rows"
    with_features(ctx, feature_tables(wh, DAY + dt.timedelta(days=1)), config).select(*spec.columns).write.mode(
        "overwrite").parquet(str(rows_path))
    spark.stop()
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
    if tag_sec is not None:
        print(f"export with the user-tag model {users / tag_sec:,.0f} users/s vs the multi-task export "
              f"{users / export_sec:,.0f} users/s: ratio {export_sec / tag_sec:.2f}")
    figures = {"multitask_s": round(export_sec, 1), "multitask_users_per_s": round(users / export_sec),
               "predict_users_per_s": round(predict_users), "ratio": round(users / export_sec / predict_users, 2)}
    if tag_sec is not None:
        figures |= {"default_ranking_s": round(tag_sec, 1), "default_ranking_users_per_s": round(users / tag_sec)}
    append("export", {"users": args.users, "candidates": args.candidates, "sample_users": args.sample_users}, figures)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
