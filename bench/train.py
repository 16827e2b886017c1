"""Training throughput: the model fed by streaming Parquet (what `tagrecall train` does)
against the same model fed from in-memory tensors, in one run; and inference throughput.

    python bench/train.py [--rows 1m] [--repeat 3] [--batch-size 1024] [--out bench/out]

Writes --rows synthetic triples (the feature columns of the default config, categorical
values drawn from realistic vocabularies, a click rate of ~10%, lognormal dwell) as Parquet
files of ~100k rows, then alternates one epoch from Parquet (models/train.tf_dataset: Arrow
record batches -> tf.data) and one epoch from tensors already in memory
(tf.data batches of the same size, materialised once in tf.data's memory cache before
timing: the fastest in-memory feed), --repeat times each. Prints the
median examples/s of each and their ratio (target: Parquet >= 80% of in-memory), then the
inference rate of predict_on_batch over in-memory batches.

Then the start of a fit, --first-steps times each, alternating: a new network and trainer
fitted on one batch (TensorFlow's trace of the train step, then the step), compiled by the
trainer's own ``compile``, which builds the optimizer's slots first (models/layers.py,
build_optimizer), or by Keras's ``Model.compile``, which leaves them to the first step and
so to a second trace. Prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from record import append  # bench/ is on sys.path when a benchmark runs as a script
from sizes import parse_size

from models import data, tables, train
from schemas.config import load_config
from schemas.features import feature_spec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_triples(folder: Path, rows: int, spec, seed: int = 0, per_file: int = 100_000) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    values = {"tag": [f"t{i:03d}" for i in range(200)], "position": [str(i) for i in range(10)] + ["none"],
              "hour": [str(h) for h in range(24)]}
    for start in range(0, rows, per_file):
        n = min(per_file, rows - start)
        cols = {"user_id": pa.array([f"u{u:07d}" for u in rng.integers(0, 100_000, n)])}
        for c in spec.categorical:
            vocab = values.get(c, [f"v{i}" for i in range(6)])
            cols[c] = pa.array(np.asarray(vocab, dtype=object)[rng.integers(0, len(vocab), n)].tolist())
        for c in spec.numeric:
            cols[c] = pa.array(rng.exponential(1.0, n))
        click = (rng.random(n) < 0.1).astype(np.int32)
        cols["click"] = pa.array(click)
        cols["dwell_sec"] = pa.array(np.where(click == 1, rng.lognormal(3.0, 0.9, n), np.nan), mask=click == 0)
        pq.write_table(pa.table(cols), folder / f"part-{start // per_file:05d}.parquet")


def first_steps(spec, stats, config, one_batch, rounds: int) -> None:
    """Seconds from fit() to the end of its first batch for a new trainer, with the slots
    built in compile and with Keras's lazy build, alternating; prints the medians."""
    import keras
    import tensorflow as tf

    from models.multitask import MultiTaskTrainer, build_network

    tf.get_logger().setLevel("ERROR")  # a new trainer per round: TensorFlow warns of retracing
    timings = {"slots built in compile": [], "Keras's lazy build": []}
    for _ in range(rounds):
        for name in timings:
            keras.utils.set_random_seed(0)
            network = build_network(spec, stats, config.model, list(config.model.tasks))
            trainer = MultiTaskTrainer(network, list(config.model.tasks), "uncertainty", config.model.fixed_weights)
            compile_ = trainer.compile if name == "slots built in compile" else super(MultiTaskTrainer, trainer).compile
            compile_(optimizer=keras.optimizers.Adam(1e-3))
            t = time.monotonic()
            trainer.fit(one_batch, epochs=1, verbose=0)
            timings[name].append(time.monotonic() - t)
            print(f"  first step, {name}: {timings[name][-1]:.1f}s", flush=True)
    med = {k: statistics.median(v) for k, v in timings.items()}
    built, lazy = med.values()
    print(f"\nfit start-up (trace + first step), median of {rounds}: {built:.1f}s with the slots built in compile, "
          f"{lazy:.1f}s with Keras's lazy build (ratio {built / lazy:.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1m")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--first-steps", type=int, default=3,
                    help="rounds of the fit start-up comparison (0 skips it)")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    import keras
    import tensorflow as tf

    from models.multitask import MultiTaskTrainer, build_network

    rows = parse_size(args.rows)
    config = load_config()
    spec = feature_spec(config)
    folder = Path(args.out).resolve() / f"train-triples-{rows}"
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.monotonic()
    write_triples(folder, rows, spec)
    ds = tables.dataset([tables.parquet_folder(folder)])
    stats = data.statistics(ds, spec)
    print(f"{rows:,} triples written and scanned for vocabularies in {time.monotonic() - t0:.1f}s; "
          f"{os.cpu_count()} cores, batch {args.batch_size}", flush=True)

    # In memory: the same rows, already converted, as tensors.
    table = ds.to_table(columns=list(spec.columns) + list(data.LABELS))
    x_np, y_np = data.to_inputs(table, spec), data.to_targets(table)
    x_mem = {k: tf.constant(v) for k, v in x_np.items()}
    y_mem = {k: tf.constant(v) for k, v in y_np.items()}
    # The fastest in-memory feed: batches materialised once in tf.data's memory cache.
    mem = tf.data.Dataset.from_tensor_slices((x_mem, y_mem)).batch(args.batch_size).cache().prefetch(2)

    keras.utils.set_random_seed(0)
    network = build_network(spec, stats, config.model, list(config.model.tasks))
    trainer = MultiTaskTrainer(network, list(config.model.tasks), "uncertainty", config.model.fixed_weights)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(mem, epochs=1, verbose=0)  # build, trace, and fill the cache before timing

    def fit_memory():
        trainer.fit(mem, epochs=1, verbose=0)

    timings = {"parquet": [], "memory": []}
    for _ in range(args.repeat):
        for name in ("parquet", "memory"):
            t = time.monotonic()
            if name == "parquet":
                trainer.fit(train.tf_dataset(ds, spec, args.batch_size, shuffle_seed=0), epochs=1, verbose=0)
            else:
                fit_memory()
            timings[name].append(time.monotonic() - t)
            print(f"  epoch from {name}: {timings[name][-1]:.1f}s ({rows / timings[name][-1]:,.0f} examples/s)",
                  flush=True)
    med = {k: statistics.median(v) for k, v in timings.items()}
    ratio = med["memory"] / med["parquet"]
    t = time.monotonic()
    scored = 0
    for xb, _ in mem.take(200):
        network.predict_on_batch(xb)
        scored += int(next(iter(xb.values())).shape[0])
    infer = scored / (time.monotonic() - t)
    print()
    print("| feed | median epoch (s) | examples/s |")
    print("|---|---|---|")
    for k in ("parquet", "memory"):
        print(f"| {k} | {med[k]:.1f} | {rows / med[k]:,.0f} |")
    print(f"\nParquet streaming at {ratio:.0%} of in-memory training throughput (target >= 80%)")
    print(f"inference (predict_on_batch, batch {args.batch_size}): {infer:,.0f} examples/s")
    append("training", {"rows": args.rows, "batch_size": args.batch_size, "repeat": args.repeat},
           {"parquet_examples_per_s": round(rows / med["parquet"]), "memory_examples_per_s": round(rows / med["memory"]),
            "ratio": round(ratio, 2), "inference_examples_per_s": round(infer)})
    if args.first_steps:
        first_steps(spec, stats, config, mem.take(1), args.first_steps)
    shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
