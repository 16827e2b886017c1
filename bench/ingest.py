"""Ingest throughput against a bare JSON -> Parquet copy of the same files, in one run.

    python bench/ingest.py [--sizes 1m,10m] [--repeat 3] [--out bench/out]

For each size, a two-day synthetic feed is generated once (cached under --out), then the
second day is ingested (validation, snapshots, duplicate checks against day one, the
no-loss count) and, alternately, copied bare: spark.read.json with the events schema
given (no inference pass) -> write.parquet. Prints the median of each and their ratio;
the target is ingest <= 1.5 x the bare copy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import time
from pathlib import Path

from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType
from record import append, size_label  # bench/ is on sys.path when a benchmark runs as a script
from sizes import parse_size

from jobs import ingest
from jobs.common.session import build_session
from jobs.tools.synthetic import FeedParams, generate
from schemas.config import load_config

START = dt.date(2026, 11, 1)
# users per million events a day, measured from the generator's defaults (~12 events per user)
USERS_PER_MILLION = 85_000
BARE_SCHEMA = StructType([
    StructField("event_id", StringType()), StructField("user_id", StringType()),
    StructField("article_id", StringType()), StructField("event_type", StringType()),
    StructField("event_time", LongType()), StructField("dwell_ms", LongType()),
    StructField("position", IntegerType()), StructField("request_id", StringType()),
])


def _feed(out: Path, events: int, days: int = 2) -> Path:
    """The synthetic feed of ``events`` a day from START, generated once under ``out``:
    ``feed-<events>/raw`` for two days, ``feed-<events>-<days>d/raw`` for other lengths (the
    last day of a feed differs with its length: its late events land in it or the next day)."""
    raw = out / (f"feed-{events}" if days == 2 else f"feed-{events}-{days}d") / "raw"
    if (raw / "_truth" / "summary.json").exists():
        return raw
    if raw.exists():
        shutil.rmtree(raw)
    users = max(1000, events * USERS_PER_MILLION // 1_000_000)
    t0 = time.monotonic()
    summary = generate(raw, START, days, FeedParams(users=users, articles=max(3000, users // 20), bad_rate=0.001))
    last = summary["per_day"][(START + dt.timedelta(days=days - 1)).isoformat()]["events_landed"]
    print(f"generated {events:,}-event feed ({users:,} users, {days} days): day {days} has {last:,} events "
          f"({time.monotonic() - t0:.0f}s)", flush=True)
    return raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1m,10m")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--driver-memory", default="12g")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(overrides={"spark": {"master": "local[*]", "driver_memory": args.driver_memory,
                                            "conf": {"spark.ui.showConsoleProgress": "false"}},
                                  "storage": {"warehouse": str(out / "warehouse")}})
    spark = build_session(base, "tagrecall-bench-ingest")
    spark.sparkContext.setLogLevel("ERROR")
    results = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        raw = _feed(out, size)
        wh = out / f"warehouse-{size}"
        config = base.replace(storage=base.storage.__class__(warehouse=str(wh), raw=str(raw)))
        day1, day2 = START, START + dt.timedelta(days=1)
        ingest.run(spark, config, day1)  # day 2 checks duplicates against day 1's events
        events_dir = raw / "events" / f"dt={day2}"
        bare_times, ingest_times = [], []
        for i in range(args.repeat):
            t0 = time.monotonic()
            (spark.read.schema(BARE_SCHEMA).json(str(events_dir))
             .write.mode("overwrite").parquet(str(out / "bare-copy")))
            bare_times.append(time.monotonic() - t0)
            t0 = time.monotonic()
            report = ingest.run(spark, config, day2)
            ingest_times.append(time.monotonic() - t0)
            print(f"  {size:>12,} run {i + 1}: bare {bare_times[-1]:.1f}s  ingest {ingest_times[-1]:.1f}s",
                  flush=True)
        landed = report["sources"]["events"]["landed"]
        bare, ing = statistics.median(bare_times), statistics.median(ingest_times)
        results.append({"events": landed, "bare_s": round(bare, 2), "ingest_s": round(ing, 2),
                         "bare_events_per_s": round(landed / bare), "ingest_events_per_s": round(landed / ing),
                         "ratio": round(ing / bare, 3), "ingest_timings": report["timings_sec"]})
        shutil.rmtree(out / "bare-copy", ignore_errors=True)
    print(f"\n{'events':>12} {'bare copy s':>12} {'ingest s':>10} {'bare ev/s':>12} {'ingest ev/s':>12} {'ratio':>7}")
    for r in results:
        print(f"{r['events']:>12,} {r['bare_s']:>12.1f} {r['ingest_s']:>10.1f} {r['bare_events_per_s']:>12,} "
              f"{r['ingest_events_per_s']:>12,} {r['ratio']:>7.2f}")
    print(f"target: ratio <= 1.50 (medians of {args.repeat} runs each, alternating)")
    (out / "ingest.json").write_text(json.dumps(results, indent=2))
    for r in results:
        append("ingest", {"events": size_label(r["events"]), "events_exact": r["events"], "repeat": args.repeat},
               {k: r[k] for k in ("bare_s", "ingest_s", "ratio")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
