"""Delta against Parquet, per step, in one run: what the Delta log costs.

    python bench/delta.py [--days 4] [--users 2000] [--ingest-size 10m] [--repeat 3] [--out bench/out]

Part 1, the demo's feed: the data steps (ingest, profiles, index, triples) for each day,
into a Parquet warehouse and a Delta warehouse from the same landing, in one session that
has Delta loaded (so both pay the same start-up); the order of the two formats alternates
by day. Then each step is run again on the last day ``--repeat`` times per format,
alternating (a re-run replaces the day: on Delta a new version whose old files stay until
VACUUM). Prints each step's median seconds per format and their ratio.

Part 2, ingest at ``--ingest-size`` events a day (bench/ingest.py's feed, cached under
--out): day 2 ingested into each format ``--repeat`` times, alternating, beside the bare
JSON -> Parquet copy of the same files. ``--ingest-size 0`` skips it.

Results go to bench/results/delta.jsonl (bench/record.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import time
from pathlib import Path

from ingest import (  # bench/ is on sys.path when a benchmark runs as a script
    BARE_SCHEMA,
    START,
    _feed,
)
from record import append, size_label
from sizes import parse_size

from jobs import index, ingest, profiles, triples
from jobs.common.session import build_session
from jobs.tools.synthetic import FeedParams, generate
from schemas.config import load_config

STEPS = (("ingest", ingest.run), ("profiles", profiles.run), ("index", index.run), ("triples", triples.run))
FORMATS = ("parquet", "delta")


def _timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def demo_chain(spark, base, out: Path, days: int, users: int, repeat: int) -> dict:
    raw = out / "delta-demo" / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    generate(raw, START, days, FeedParams(users=users, articles=max(1500, users * 3 // 2), seed=7, bad_rate=0.002))
    configs = {}
    for fmt in FORMATS:
        wh = out / "delta-demo" / f"warehouse-{fmt}"
        shutil.rmtree(wh, ignore_errors=True)
        configs[fmt] = load_config(overrides={"storage": {"warehouse": str(wh), "raw": str(raw), "format": fmt}})
    first: dict[str, dict[str, list[float]]] = {f: {s: [] for s, _ in STEPS} for f in FORMATS}
    dates = [START + dt.timedelta(days=k) for k in range(days)]
    for k, day in enumerate(dates):
        for fmt in (FORMATS if k % 2 == 0 else FORMATS[::-1]):
            for name, run in STEPS:
                first[fmt][name].append(_timed(lambda r=run, f=fmt, d=day: r(spark, configs[f], d)))
        print(f"  day {day}: " + "  ".join(f"{f} {sum(first[f][s][-1] for s, _ in STEPS):.1f}s" for f in FORMATS),
              flush=True)
    again: dict[str, dict[str, list[float]]] = {f: {s: [] for s, _ in STEPS} for f in FORMATS}
    for i in range(repeat):
        for fmt in (FORMATS if i % 2 == 0 else FORMATS[::-1]):
            for name, run in STEPS:
                again[fmt][name].append(_timed(lambda r=run, f=fmt: r(spark, configs[f], dates[-1])))
    rows = {}
    for name, _ in STEPS:
        row = {f"{f}_first_s": round(statistics.median(first[f][name][1:] or first[f][name]), 2) for f in FORMATS}
        row.update({f"{f}_rerun_s": round(statistics.median(again[f][name]), 2) for f in FORMATS})
        row["ratio_first"] = round(row["delta_first_s"] / row["parquet_first_s"], 2)
        row["ratio_rerun"] = round(row["delta_rerun_s"] / row["parquet_rerun_s"], 2)
        rows[name] = row
    return rows


def ingest_at(spark, base, out: Path, size: int, repeat: int) -> dict:
    raw = _feed(out, size)
    day1, day2 = START, START + dt.timedelta(days=1)
    configs = {}
    for fmt in FORMATS:
        wh = out / f"delta-ingest-{size}" / f"warehouse-{fmt}"
        shutil.rmtree(wh, ignore_errors=True)
        configs[fmt] = load_config(overrides={"storage": {"warehouse": str(wh), "raw": str(raw), "format": fmt}})
        ingest.run(spark, configs[fmt], day1)  # day 2 checks duplicates against day 1's events
    times: dict[str, list[float]] = {"bare": [], **{f: [] for f in FORMATS}}
    events = str(raw / "events" / f"dt={day2}")
    for i in range(repeat):
        times["bare"].append(_timed(lambda: spark.read.schema(BARE_SCHEMA).json(events)
                                    .write.mode("overwrite").parquet(str(out / "bare-copy"))))
        for fmt in (FORMATS if i % 2 == 0 else FORMATS[::-1]):
            times[fmt].append(_timed(lambda f=fmt: ingest.run(spark, configs[f], day2)))
        print(f"  {size:,} run {i + 1}: " + "  ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    shutil.rmtree(out / "bare-copy", ignore_errors=True)
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {"bare_s": med["bare"], "parquet_s": med["parquet"], "delta_s": med["delta"],
            "delta_over_parquet": round(med["delta"] / med["parquet"], 2),
            "delta_over_bare": round(med["delta"] / med["bare"], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=4, help="days of the demo's feed (0: skip part 1)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--ingest-size", default="10m")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--driver-memory", default="12g")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(overrides={"spark": {"master": "local[*]", "driver_memory": args.driver_memory},
                                  "storage": {"format": "delta", "warehouse": str(out / "warehouse")}})
    spark = build_session(base, "tagrecall-bench-delta")
    spark.sparkContext.setLogLevel("ERROR")
    if args.days > 0:
        demo_part(spark, base, out, args)
    size = parse_size(args.ingest_size) if args.ingest_size not in ("0", "") else 0
    if size:
        r = ingest_at(spark, base, out, size, args.repeat)
        print(f"\ningest of {size:,} events (medians of {args.repeat}): bare copy {r['bare_s']:.1f}s, "
              f"parquet {r['parquet_s']:.1f}s, delta {r['delta_s']:.1f}s: delta/parquet {r['delta_over_parquet']:.2f}, "
              f"delta/bare {r['delta_over_bare']:.2f}")
        append("delta", {"events": size_label(size), "repeat": args.repeat}, r, note="ingest, Delta against Parquet")
    return 0


def demo_part(spark, base, out: Path, args) -> None:
    rows = demo_chain(spark, base, out, args.days, args.users, args.repeat)
    print(f"\nthe demo's feed ({args.users:,} users, {args.days} days), median seconds per step:")
    print(f"{'step':<10}{'parquet':>9}{'delta':>9}{'ratio':>7}   {'re-run: parquet':>16}{'delta':>9}{'ratio':>7}")
    for name, r in rows.items():
        print(f"{name:<10}{r['parquet_first_s']:>9.1f}{r['delta_first_s']:>9.1f}{r['ratio_first']:>7.2f}   "
              f"{r['parquet_rerun_s']:>16.1f}{r['delta_rerun_s']:>9.1f}{r['ratio_rerun']:>7.2f}")
    total = {k: round(sum(r[k] for r in rows.values()), 2) for k in ("parquet_first_s", "delta_first_s")}
    print(f"{'all four':<10}{total['parquet_first_s']:>9.1f}{total['delta_first_s']:>9.1f}"
          f"{total['delta_first_s'] / total['parquet_first_s']:>7.2f}")
    append("delta", {"users": size_label(args.users), "days": args.days, "repeat": args.repeat},
           {**{f"{s}_{k}": v for s, r in rows.items() for k, v in r.items()}, **total},
           note="demo feed, data steps, Delta against Parquet in one session")


if __name__ == "__main__":
    raise SystemExit(main())
