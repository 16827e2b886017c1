"""`tagrecall evaluate` on one day of a built warehouse: seconds per run (median), and the
recall@k merge against the plain Spark join it replaced, in the same process.

    python bench/evaluate.py --warehouse WH [--config jobs/conf/kuairand.toml] [--date 2022-04-28]
                             [--runs 3] [--no-reference]

The warehouse must hold D's user_top_tags, user_tag_profile, tag_stats and tag_index and
D+1's events and articles (the KuaiRand-Pure week: README, "KuaiRand-Pure"). The step
(evaluate.evaluate, every method and metric) runs --runs times after one warm-up run. The
reference joins each method's lists with the tag index, sums the merge scores per (user,
article) and ranks them with a window, one query per method (evaluate before the numpy
merge: the rank_sum merge, which the configuration must use); its hits must equal the step's
for every method, and the bench fails if not. The
shuffles of both recall queries are counted from their physical plans.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import time


def reference_hits(lists, clicks, tag_index, k: int, methods: list[str]) -> tuple[dict[str, int], list]:
    """(recall_at_k numerators, the queries) with a join per method: (user, tag) x (tag,
    article) rows, summed per (user, article), top k by a window."""
    from pyspark.sql import functions as F

    from jobs.online.recall import ROUND
    from jobs.transforms.tag_lists import top_k_per_key

    weight = F.lit(1.0) / (F.log(1.0 + F.col("rank").cast("double")) / F.lit(math.log(2.0)))
    out, plans = {}, []
    for method in methods:
        merged = (lists.where(F.col("method") == method).join(tag_index.select("tag", "article_id", "score"), "tag")
                  .groupBy("user_id", "article_id")
                  .agg(F.round(F.sum(weight * F.col("score")), ROUND).alias("score")))
        top = top_k_per_key(merged, "user_id", [F.desc("score"), "article_id"], k, rank_col="position")
        query = top.join(clicks, ["user_id", "article_id"])
        out[method] = query.count()
        plans.append(query)
    return out, plans


def shuffles(df) -> int:
    return df._jdf.queryExecution().executedPlan().toString().count("Exchange")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--config", default="jobs/conf/kuairand.toml")
    parser.add_argument("--date", default="2022-04-28")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="time the step only")
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from jobs import evaluate
    from jobs.common.session import build_session
    from jobs.common.storage import Warehouse
    from schemas.config import load_config

    # The reference join computes the rank_sum merge.
    config = load_config(args.config, overrides={"storage": {"warehouse": args.warehouse},
                                                 "recall": {"merge": "rank_sum"}})
    spark = build_session(config, "bench-evaluate")
    date = dt.date.fromisoformat(args.date)
    evaluate.evaluate(spark, config, date)  # warm-up: JIT, Python workers
    seconds, rows = [], None
    for i in range(args.runs):
        started = time.monotonic()
        rows = evaluate.evaluate(spark, config, date)
        seconds.append(time.monotonic() - started)
        print(f"run {i + 1}: {seconds[-1]:.1f} s", flush=True)
    step = statistics.median(seconds)
    print(f"evaluate {args.date}: median {step:.1f} s over {args.runs} runs")
    if args.no_reference:
        return

    wh = Warehouse(spark, config)
    day, nxt = date.isoformat(), (date + dt.timedelta(days=1)).isoformat()
    events = wh.read_partition("events", nxt).where(F.col("event_type").isin("impression", "click"))
    # Checkpointed, so that the plans below hold the recall queries' own shuffles only.
    clicks = events.where(F.col("event_type") == "click").select("user_id", "article_id").distinct().localCheckpoint()
    users = events.select("user_id").distinct()
    served_n, k = config.export.top_n, config.evaluate.recall_k
    learned = wh.read_partition("user_tag_scores", day) if wh.has_partition("user_tag_scores", day) else None
    lists = evaluate.method_lists(wh.read_partition("user_top_tags", day), wh.read_partition("user_tag_profile", day),
                                  wh.read_partition("tag_stats", day), users,
                                  max(served_n, config.evaluate.top_n), config, learned)
    every = evaluate.stacked(lists).where(F.col("rank") <= served_n).localCheckpoint()
    tag_index = wh.read_partition("tag_index", day)
    started = time.monotonic()
    expected, plans = reference_hits(every, clicks, tag_index, k, list(lists))
    reference = time.monotonic() - started
    index = evaluate.index_of(tag_index)
    started = time.monotonic()
    got = {m: sum(g.values()) for m, g in evaluate.recall_hits(every, clicks, index, k, list(lists)).items()}
    merge = time.monotonic() - started
    found = {r["method"]: r["numerator"] for r in rows if r["metric"] == "recall_at_k"}
    print(f"recall@{k} merge, {len(expected)} methods, lists computed beforehand: "
          f"join per method {reference:.1f} s ({sum(shuffles(p) for p in plans)} shuffles), "
          f"numpy merge {merge:.1f} s "
          f"({shuffles(evaluate.recall_query(every, clicks, index, k, list(lists)))} shuffles): "
          f"{reference / merge:.1f}x")
    for method in sorted(expected):
        print(f"  {method:<10} hits: join {expected[method]}, numpy {got[method]}, step {found[method]:.0f}")
    if any(expected[m] != got[m] or expected[m] != found[m] for m in expected):
        raise SystemExit("the numpy merge and the join disagree")


if __name__ == "__main__":
    main()
