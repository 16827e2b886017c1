"""The profiles step at scale: the daily cost as history grows, the stored layout, full
recomputation, and DuckDB.

    python bench/profiles.py [--events 10m] [--days 6] [--out bench/out] [--keep] [--no-final-full]
                             [--compare-plain] [--repeat 1]

An events table of --days days (--events a day) and a daily articles snapshot are written
straight into a warehouse under --out with Spark (the ingest step is benchmarked on its own,
bench/ingest.py), shaped like the synthetic feed: ~12 events per user a day (85k users per
million events), Zipf-skewed articles and tags, 1-5 tags per article, impressions, clicks
with dwell, likes, comments, favorites, shares. Then, in one run:

  (a) profiles at day 1 (full over one day), then every day 2..N incremental, as the daily
      chain runs them: the cost of a day as the profile grows (the table prints each day);
      with --compare-plain, day N again with profiles.buckets = 0 (the profile read plain:
      the merge shuffles it whole, as before bucketing) and bucketed, alternating --repeat
      times; then day N full over N days (the recomputation the incremental job avoids);
  (b) day N's incremental aggregation as one DuckDB SQL query over the same Parquet files
      (yesterday's profile, day N's events, day N's articles), with the same pruning and
      capping, in a separate process: a single-machine reference. Its output is compared
      with Spark's (rows, and the sum of each weight column).

Peak memory: the resident set of the Spark driver JVM (sampled every 0.2 s) and the peak
resident set of the DuckDB process. Prints a table; figures go to the README.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from pyspark.sql import functions as F
from record import append  # bench/ is on sys.path when a benchmark runs as a script
from sizes import parse_size

from jobs import profiles
from jobs.common.dates import day_bounds
from jobs.common.session import build_session
from jobs.common.storage import Warehouse
from schemas.config import load_config

START = dt.date(2026, 1, 1)
USERS_PER_MILLION = 85_000
TAGS = 1000


class PeakRSS:
    """Peak resident set of this process and its children (the Spark JVM), sampled."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def __enter__(self):
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_articles(spark, wh: Warehouse, articles: int, days: list[dt.date]) -> None:
    start_sec = day_bounds(days[0], "UTC")[0].timestamp()
    # Tag of slot i of article a: a Zipf-like draw from a hash, deduplicated per article.
    draw = "pow(pmod(hash(id, i), 1000003) / 1000003.0 + 1e-9, 3)"
    names = F.expr(f"array_distinct(transform(sequence(1, 1 + pmod(hash(id), 5)), "
                   f"i -> format_string('t%04d', cast({draw} * {TAGS} as int))))")
    df = (spark.range(articles)
          .withColumn("names", names)
          .select(F.format_string("a%07d", "id").alias("article_id"),
                  F.timestamp_seconds(F.lit(start_sec) - (F.pmod(F.hash("id", F.lit(7)), 60 * 86400))
                                      .cast("double")).alias("publish_time"),
                  F.expr("transform(names, t -> named_struct('tag', t, 'weight', 1.0 / size(names)))")
                  .alias("tags")))
    df = df.withColumn("updated_time", F.col("publish_time")).select("article_id", "publish_time",
                                                                      "updated_time", "tags")
    staged = f"{wh.root}/_bench_articles"
    df.write.mode("overwrite").parquet(staged)
    for day in days:
        wh.write_partition(spark.read.parquet(staged), "articles", day.isoformat())


def write_events(spark, wh: Warehouse, day: dt.date, n: int, users: int, articles: int, seed: int) -> None:
    start_sec = day_bounds(day, "UTC")[0].timestamp()
    r = F.rand(seed + 2)
    etype = (F.when(r < 0.74, "impression").when(r < 0.94, "click").when(r < 0.97, "like")
             .when(r < 0.98, "comment").when(r < 0.99, "favorite").otherwise("share"))
    df = (spark.range(n)
          .select(F.format_string(f"e{day:%Y%m%d}%09d", "id").alias("event_id"),
                  F.format_string("u%07d", (F.rand(seed) * users).cast("int")).alias("user_id"),
                  F.format_string("a%07d", (F.pow(F.rand(seed + 1), 2.0) * articles).cast("int")).alias("article_id"),
                  etype.alias("event_type"),
                  F.timestamp_seconds(F.lit(start_sec) + F.rand(seed + 3) * 86399.0).alias("event_time"),
                  F.exp(F.randn(seed + 4) * 0.9 + math.log(20_000)).cast("long").alias("_dwell"),
                  (F.rand(seed + 5) * 10).cast("int").alias("position"))
          .withColumn("dwell_ms", F.when(F.col("event_type") == "click", F.col("_dwell")))
          .withColumn("request_id", F.concat("user_id", F.lit("-"), (F.col("position") * 0).cast("string")))
          .select("event_id", "user_id", "article_id", "event_type", "event_time", "dwell_ms", "position",
                  "request_id"))
    wh.write_partition(df, "events", day.isoformat())


DUCKDB_SQL = """
SET threads = {threads};
SET memory_limit = '{memory_limit}';
COPY (
WITH ev AS (
  SELECT user_id, article_id, event_type, event_time,
         {signal} AS s,
         {end_sec} - epoch_us(event_time) / 1e6 AS age
  FROM read_parquet('{events}/*.parquet')
), per_article AS (
  SELECT user_id, article_id,
         {per_article_weights},
         sum(CASE WHEN event_type = 'impression' THEN exp({count_rate} * age) ELSE 0 END) AS imp,
         sum(CASE WHEN event_type = 'click' THEN exp({count_rate} * age) ELSE 0 END) AS clk,
         max(event_time) AS last_t
  FROM ev GROUP BY user_id, article_id
), article_tags AS (
  SELECT article_id, t.tag AS tag, t.weight AS tag_weight
  FROM (SELECT article_id, unnest(tags) AS t FROM read_parquet('{articles}/*.parquet'))
), today AS (
  SELECT p.user_id, a.tag, {today_weights},
         sum(imp) AS impressions, sum(clk) AS clicks, max(last_t) AS last_event_time
  FROM per_article p JOIN article_tags a USING (article_id) GROUP BY p.user_id, a.tag
), previous AS (
  SELECT user_id, tag, {previous_weights}, impressions * {count_factor} AS impressions,
         clicks * {count_factor} AS clicks, last_event_time
  FROM read_parquet('{previous}/*.parquet')
), merged AS (
  SELECT user_id, tag, {merged_weights}, sum(impressions) AS impressions, sum(clicks) AS clicks,
         max(last_event_time) AS last_event_time
  FROM (SELECT * FROM previous UNION ALL BY NAME SELECT * FROM today) GROUP BY user_id, tag
), kept AS (
  SELECT *, greatest({shares}) AS share FROM merged WHERE greatest({weight_cols}, impressions) >= {min_weight}
)
SELECT user_id, tag, {weight_cols}, impressions, clicks, last_event_time FROM kept
QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY share DESC, impressions DESC, tag) <= {max_tags}
) TO '{out}' (FORMAT parquet);
"""


def duckdb_sql(config, day: dt.date, wh: Warehouse, out: str, threads: int, memory_limit: str) -> str:
    cfg = config.profiles
    _, end = day_bounds(day, config.time.timezone)
    prev_end = day_bounds(day - dt.timedelta(days=1), config.time.timezone)[1]
    step = (end - prev_end).total_seconds()
    ln2 = math.log(2.0)
    rate = {h: -ln2 / (days * 86400.0) for h, days in cfg.half_life_days.items()}
    weights = " ".join(f"WHEN '{k}' THEN {v!r}" for k, v in cfg.event_weights.items())
    signal = (f"coalesce(CASE event_type {weights} END, 0.0) + CASE WHEN event_type = 'click' AND dwell_ms "
              f"IS NOT NULL THEN {cfg.dwell_weight!r} * least(ln(1 + greatest(dwell_ms / 1000.0, 0)) / "
              f"{math.log1p(cfg.dwell_cap_sec)!r}, 1.0) ELSE 0 END")
    hs = list(cfg.half_life_days)

    def path(name, d):
        return wh.partition_location(name, d.isoformat()).removeprefix("file://")

    return DUCKDB_SQL.format(
        threads=threads, memory_limit=memory_limit, signal=signal, end_sec=end.timestamp(),
        events=path("events", day), articles=path("articles", day),
        previous=path("user_tag_profile", day - dt.timedelta(days=1)), out=out,
        per_article_weights=", ".join(f"sum(s * exp({rate[h]!r} * age)) AS w_{h}" for h in hs),
        count_rate=repr(rate[cfg.counts_horizon]),
        today_weights=", ".join(f"sum(w_{h} * tag_weight) AS {h}_weight" for h in hs),
        previous_weights=", ".join(f"{h}_weight * {math.exp(rate[h] * step)!r} AS {h}_weight" for h in hs),
        count_factor=repr(math.exp(rate[cfg.counts_horizon] * step)),
        merged_weights=", ".join(f"sum({h}_weight) AS {h}_weight" for h in hs),
        weight_cols=", ".join(f"{h}_weight" for h in hs),
        shares=", ".join(f"coalesce({h}_weight / nullif(sum({h}_weight) OVER (PARTITION BY user_id), 0), 0)"
                         for h in hs),
        min_weight=repr(cfg.min_weight), max_tags=cfg.max_tags_per_user)


DUCKDB_RUNNER = """
import json, sys, time, resource, duckdb

sql = open(sys.argv[1]).read()
t0 = time.monotonic()
duckdb.connect().execute(sql)
seconds = time.monotonic() - t0
print(json.dumps({"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run_duckdb(sql: str, workdir: Path) -> dict:
    (workdir / "query.sql").write_text(sql)
    done = subprocess.run([sys.executable, "-c", DUCKDB_RUNNER, str(workdir / "query.sql")],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"DuckDB query failed ({workdir / 'query.sql'}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stop_spark(spark) -> None:
    """Stop the session and its driver JVM: spark.stop() leaves the JVM running (with the
    heap it grew) until Python exits, and DuckDB, run next, was killed for memory beside it
    at 78M profile rows on a 24 GiB machine. A later build_session starts a new JVM."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    if gateway is not None:
        gateway.shutdown()
        proc = getattr(gateway, "proc", None)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    SparkContext._gateway = SparkContext._jvm = None


def _timed(label: str, fn, results: dict) -> None:
    with PeakRSS() as mem:
        t0 = time.monotonic()
        report = fn()
        seconds = time.monotonic() - t0
    results[label] = {"seconds": seconds, "peak_rss": mem.peak,
                      "rows": report["rows_written"]["user_tag_profile"] if report else None}
    print(f"  {label}: {seconds:.1f}s, peak RSS {mem.peak / 2**30:.2f} GiB", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default="10m", help="events a day (default 10m)")
    ap.add_argument("--days", type=int, default=6,
                    help="days of history (30 days at 2m events took 35 min on 2 cores, the full "
                         "recomputation at day 30 6 min of it; at 10m, hours)")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--driver-memory", default="10g")
    ap.add_argument("--keep", action="store_true", help="reuse a warehouse already generated under --out "
                    "(with at least --days days)")
    ap.add_argument("--only-duckdb", action="store_true",
                    help="with --keep, after a run: only the DuckDB query of the last day, compared "
                         "with the profile Spark wrote for that day")
    ap.add_argument("--no-final-full", action="store_true",
                    help="skip the full recomputation at the last day")
    ap.add_argument("--compare-plain", action="store_true",
                    help="time day N again read plain (profiles.buckets = 0) and bucketed, alternating")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of --compare-plain (default 1)")
    ap.add_argument("--generate-only", action="store_true", help="write the warehouse's events and articles, "
                    "then stop (a later run with --keep times the steps)")
    args = ap.parse_args()
    n = parse_size(args.events)
    users = max(1000, n * USERS_PER_MILLION // 1_000_000)
    articles = max(3000, users // 20)
    base = Path(args.out).resolve() / f"profiles-{n}-{args.days}"
    days = [START + dt.timedelta(days=k) for k in range(args.days)]
    config = load_config(overrides={"storage": {"warehouse": str(base / "warehouse"), "raw": str(base / "raw")},
                                    "spark": {"driver_memory": args.driver_memory,
                                              "conf": {"spark.ui.showConsoleProgress": "false"}}})
    spark = build_session(config, "tagrecall-bench-profiles", set_master=True)
    spark.sparkContext.setLogLevel("ERROR")
    marker = base / "generated.json"
    if args.keep and not marker.exists():
        kept = sorted(base.parent.glob(f"profiles-{n}-*/generated.json"))
        kept = [m for m in kept if json.loads(m.read_text())["days"] >= args.days]
        if kept:  # a longer generated history serves a shorter run: days beyond it are not read
            base, marker = kept[0].parent, kept[0]
            config = config.replace(storage=dataclasses.replace(config.storage, warehouse=str(base / "warehouse")))
    wh = Warehouse(spark, config)
    if not (args.keep and marker.exists()):
        if base.exists():
            shutil.rmtree(base)
        t0 = time.monotonic()
        write_articles(spark, wh, articles, days)
        for k, day in enumerate(days):
            write_events(spark, wh, day, n, users, articles, seed=1000 + k)
            print(f"events {day}: {n:,} written ({time.monotonic() - t0:.0f}s)", flush=True)
        marker.write_text(json.dumps({"events": n, "days": args.days, "users": users, "articles": articles}))
    print(f"{args.days} days x {n:,} events, {users:,} users, {articles:,} articles, {TAGS} tags; "
          f"{psutil.cpu_count()} cores", flush=True)
    if args.generate_only:
        stop_spark(spark)
        return 0

    if args.only_duckdb:
        stop_spark(spark)
        last = days[-1]
        duck_out = base / "duckdb_profile.parquet"
        duck = run_duckdb(duckdb_sql(config, last, wh, str(duck_out), threads=psutil.cpu_count(),
                                     memory_limit="16GB"), base)
        import duckdb

        spark_out = wh.partition_location("user_tag_profile", last.isoformat()).removeprefix("file://")
        for label, path in (("duckdb", str(duck_out)), ("spark", f"{spark_out}/*.parquet")):
            row = duckdb.sql(f"SELECT count(*), sum(long_weight), sum(short_weight) FROM read_parquet('{path}')"
                             ).fetchall()[0]
            print(f"  {label} output: rows={row[0]:,} long={row[1]!r} short={row[2]!r}")
        print(f"  duckdb day {args.days} incremental: {duck['seconds']:.1f}s, peak RSS "
              f"{duck['peak_rss'] / 2**30:.2f} GiB")
        return 0

    results: dict = {}
    _timed("day 1 full (1 day)", lambda: profiles.run(spark, config, days[0], full=True), results)
    for k, day in enumerate(days[1:], start=2):
        _timed(f"day {k} incremental", lambda day=day: profiles.run(spark, config, day), results)
        if k >= 3:  # the daily runs read D-1's profile only: older ones go, to bound the disk
            wh.fs.delete(wh.partition_location("user_tag_profile", days[k - 3].isoformat()))
    last = days[-1]
    label = f"day {args.days} incremental"
    if args.compare_plain:
        plain = config.replace(profiles=dataclasses.replace(config.profiles, buckets=0))
        for r in range(args.repeat):
            _timed(f"day {args.days} incremental, plain (round {r + 1})", lambda: profiles.run(spark, plain, last),
                   results)
            _timed(f"day {args.days} incremental, bucketed (round {r + 1})", lambda: profiles.run(spark, config, last),
                   results)
    incremental = wh.read_partition("user_tag_profile", last.isoformat())
    spark_sums = incremental.agg(F.count(F.lit(1)).alias("rows"), F.sum("long_weight").alias("long"),
                                 F.sum("short_weight").alias("short")).first().asDict()
    # DuckDB right after the incremental run it is compared with, on the same inputs, with
    # Spark's JVM gone so that the two never hold memory at once.
    stop_spark(spark)
    duck_out = base / "duckdb_profile.parquet"
    sql = duckdb_sql(config, last, wh, str(duck_out), threads=psutil.cpu_count(), memory_limit="16GB")
    duck = run_duckdb(sql, base)
    import duckdb

    duck_sums = duckdb.sql(f"SELECT count(*) AS rows, sum(long_weight) AS long, sum(short_weight) AS short "
                           f"FROM read_parquet('{duck_out}')").fetchall()[0]
    print(f"  duckdb day {args.days} incremental: {duck['seconds']:.1f}s, peak RSS {duck['peak_rss'] / 2**30:.2f} GiB")
    print(f"  outputs: spark {spark_sums}, duckdb rows={duck_sums[0]} long={duck_sums[1]} short={duck_sums[2]}",
          flush=True)
    if not args.no_final_full:
        spark = build_session(config, "tagrecall-bench-profiles", set_master=True)
        _timed(f"day {args.days} full ({args.days} days)", lambda: profiles.run(spark, config, last, full=True),
               results)
        stop_spark(spark)

    print()
    print("| run | seconds | peak RSS (GiB) | profile rows |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| Spark {name} | {r['seconds']:.1f} | {r['peak_rss'] / 2**30:.2f} | {r['rows']:,} |")
    print(f"| DuckDB day {args.days} incremental | {duck['seconds']:.1f} | {duck['peak_rss'] / 2**30:.2f} | "
          f"{duck_sums[0]:,} |")
    print()

    def median(prefix: str) -> float:
        return statistics.median(r["seconds"] for name, r in results.items() if name.startswith(prefix))

    inc = median(f"day {args.days} incremental, bucketed") if args.compare_plain else results[label]["seconds"]
    day2 = results["day 2 incremental"]["seconds"]
    for k in sorted({2, 10, 20, 30, args.days} & set(range(2, args.days + 1))):
        print(f"incremental day {k}: {results[f'day {k} incremental']['seconds']:.1f}s")
    full_label = f"day {args.days} full ({args.days} days)"
    if full_label in results:
        print(f"{full_label} / day {args.days} incremental: {results[full_label]['seconds'] / inc:.1f}x")
    print(f"incremental day {args.days} / day 2: {inc / day2:.2f}x")
    # Once every user holds max_tags_per_user tags the profile stops growing: the daily cost
    # should then stay flat.
    final = results[f"day {args.days} incremental"]["rows"]
    first_full = args.days
    while first_full > 2 and results[f"day {first_full - 1} incremental"]["rows"] == final:
        first_full -= 1
    if first_full < args.days:
        flat = statistics.median(results[f"day {k} incremental"]["seconds"] for k in range(first_full, args.days))
        print(f"the profile holds its final {final:,} rows from day {first_full}: median of days {first_full}.."
              f"{args.days - 1} {flat:.1f}s; incremental day {args.days} / that median: {inc / flat:.2f}x")
    if args.compare_plain:
        plain_s = median(f"day {args.days} incremental, plain")
        print(f"day {args.days} incremental, bucketed / plain (medians of {args.repeat}): {inc:.1f}s / "
              f"{plain_s:.1f}s = {inc / plain_s:.2f}")
    print(f"Spark / DuckDB (day {args.days} incremental): {inc / duck['seconds']:.2f}x (goal <= 2x)")
    figures = {"incremental_s": round(inc, 1), "duckdb_s": round(duck["seconds"], 1),
               "spark_over_duckdb": round(inc / duck["seconds"], 2), "incremental_day_n_over_day_2": round(inc / day2, 2)}
    if first_full < args.days:
        figures["incremental_over_full_profile_median"] = round(inc / flat, 2)
    if full_label in results:
        figures["full_s"] = round(results[full_label]["seconds"], 1)
    append("profiles", {"events_per_day": args.events, "days": args.days}, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
