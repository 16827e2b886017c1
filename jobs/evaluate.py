"""Evaluate step: D's recall against D+1's behaviour -> ``recall_eval`` (partition D).

For the users active on D+1 (any event), every method names each user's tags; a user a
method has no tags for gets the global list, as the online recall does (jobs/online/recall.py):

- ``export``: D's ``user_top_tags``, what was served (the model's ranking, a baseline when
  export's guard fell back to one, or the profile blend without a model);
- ``model``: D's ``model_top_tags``, export's ranking before the guard (the same as export
  unless the guard fell back), when written: the guard's evidence (jobs/transforms/guard.py);
- ``long``, ``short``, ``blend``: the top profile tags by that horizon's weight or the blend
  (jobs/transforms/tag_lists.py), filled up with the global list;
- ``mix``: the user's tags by their share of the user's decayed impressions +
  evaluate.mix_click_weight x their share of the decayed clicks in tag_stats, candidates
  being the user's tags and the evaluate.mix_global_tags most clicked (what the feed chose
  to show the user, pulled towards what everyone clicks);
- ``tag_model``: D's ``user_tag_scores`` (the user-tag model's ranking alone), when the
  tag_model step wrote them for D;
- ``global``: the export.top_n tags with the most decayed clicks in D's tag_stats (the list
  served to users without tags).

Metrics (numerator and denominator are kept beside each value):

- ``recall_at_k`` (k = evaluate.recall_k, the method's export.top_n tags): the share of the
  distinct (user, article) clicks of D+1 that the recall would have returned: the user's
  tags x D's tag_index, merged exactly as jobs/online/recall.py merges them, top k
  (in numpy, jobs/online/bulk.py, one row of lists and clicks per clicking user);
- ``click_coverage`` (top evaluate.top_n tags): the share of D+1's clicks whose article (D+1's
  snapshot) carries one of the user's tags;
- ``tagged_impressions`` and ``tag_ctr``, the two profile metrics of WeChat's user-tag
  paper: the share of D+1's impressions whose article carries one of the user's top-N
  tags, and the clicks on such articles over those impressions;
- ``tag_precision_at_K``, ``tag_recall_at_K``, ``tag_ndcg_at_K`` (K in TAG_KS): tag
  prediction over the whole vocabulary, as the user-tag paper measures it: per user with a
  click on a tagged article on D+1, the method's first K tags against the tags of the
  articles clicked (never the user's history's tags), averaged over those users (the
  numerator is the sum over users, the denominator their number);
- ``tag_coverage``: distinct tags in the method's served lists (export.top_n) over the users
  active on D+1, against the tags of D's tag_stats (the vocabulary);
- method ``all`` holds the plain click-through rate of D+1 as their reference.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.entry import Step
from jobs.common.storage import Warehouse
from jobs.online.bulk import Index, top_k_hits
from jobs.transforms.tag_lists import BASELINES, baseline, filled, global_tags
from schemas.config import Config
from schemas.tables import RECALL_EVAL

log = logging.getLogger(__name__)

NAME = "evaluate"
TABLE = "recall_eval"
METHODS = ("export", "model", "tag_model", *BASELINES)


RECALLED = "method string, hits long"
TAG_KS = (1, 3, 5, 10)


def stacked(lists: dict[str, DataFrame]) -> DataFrame:
    """(method, user_id, tag, rank): every method's lists in one DataFrame."""
    return reduce(DataFrame.unionByName, (df.select(F.lit(m).alias("method"), "user_id", "tag", "rank")
                                          for m, df in lists.items()))


def recall_query(lists: DataFrame, clicks: DataFrame, tag_index: DataFrame, k: int, methods: list[str]) -> DataFrame:
    """(method, hits): how many of D+1's distinct (user, article) ``clicks`` the recall of
    jobs.online.recall.merge returns in its top ``k`` over ``tag_index``, for the lists
    (method, user_id, tag, rank) of ``methods``. The users' lists and clicks travel together,
    one row per clicking user; the index (at most index.max_articles_per_tag articles a tag,
    what Redis holds) goes to every Python worker, where jobs/online/bulk.py merges the
    lists in numpy."""
    rows = tag_index.select("tag", "article_id", "score").collect()
    index = Index.build([r["tag"] for r in rows], [r["article_id"] for r in rows], [r["score"] for r in rows])
    per_user = (lists.groupBy("user_id").agg(F.collect_list(F.struct("method", "tag", "rank")).alias("tags"))
                .join(clicks.groupBy("user_id").agg(F.collect_list("article_id").alias("clicked")), "user_id"))
    return (per_user.mapInArrow(_hits_of_batches(index, sorted(methods), k), RECALLED)
            .groupBy("method").agg(F.sum("hits").alias("hits")))


def recall_hits(lists: DataFrame, clicks: DataFrame, tag_index: DataFrame, k: int, methods: list[str]
                ) -> dict[str, int]:
    """recall_query's hits per method, 0 for a method no clicking user has."""
    got = recall_query(lists, clicks, tag_index, k, methods).collect()
    return {m: 0 for m in methods} | {r["method"]: int(r["hits"]) for r in got}


def _hits_of_batches(index: Index, methods: list[str], k: int):
    """A mapInArrow function: rows (user_id, tags: [(method, tag, rank)], clicked: [article_id])
    -> (method, hits) for each method, summed over the batch."""
    def hits(batches):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        for batch in batches:
            tags, clicked = batch.column("tags"), batch.column("clicked")
            entries = tags.flatten()
            user = pc.list_parent_indices(tags).to_numpy()
            method = pc.index_in(entries.field("method"), value_set=pa.array(methods)).to_numpy().astype(np.int64)
            click_user = pc.list_parent_indices(clicked).to_numpy()
            click_columns = index.columns_of(clicked.flatten().to_pylist())
            n = len(methods)
            per_list = top_k_hits(  # list i is user i // n under method i % n
                index, batch.num_rows * n, user * n + method, index.rows_of(entries.field("tag").to_pylist()),
                entries.field("rank").to_numpy(zero_copy_only=False).astype(np.int64),
                np.repeat(click_user * n, n) + np.tile(np.arange(n), len(click_user)),
                np.repeat(click_columns, n), k)
            yield pa.record_batch([pa.array(methods), pa.array(per_list.reshape(-1, n).sum(axis=0))],
                                  names=["method", "hits"])

    return hits


def method_lists(served: DataFrame, profile: DataFrame, tag_stats: DataFrame, users: DataFrame,
                 top_n: int, config: Config, learned: DataFrame | None = None,
                 model: DataFrame | None = None) -> dict[str, DataFrame]:
    """(user_id, tag, rank) with ``top_n`` tags for every user of ``users``, per method:
    ``served`` is D's user_top_tags, ``model`` D's model_top_tags and ``learned`` D's
    user_tag_scores (None when absent), ``profile`` and ``tag_stats`` D's tables."""
    top_tags = global_tags(tag_stats, top_n)

    def ranked(df: DataFrame) -> DataFrame:
        return filled(df.select("user_id", "tag", "rank"), users, top_tags, top_n)

    lists = {"export": ranked(served)}
    if model is not None:
        lists["model"] = ranked(model)
    if learned is not None:
        lists["tag_model"] = ranked(learned)
    for method in BASELINES:
        lists[method] = baseline(method, profile, tag_stats, users, top_tags, top_n,
                                 config.evaluate.mix_click_weight, config.evaluate.mix_global_tags)
    return lists


def tag_prediction(every: DataFrame, relevant: DataFrame) -> dict[str, dict[str, float]]:
    """{method: {metric: sum over users}} of P@K, R@K and NDCG@K (K in TAG_KS) for the lists
    (method, user_id, tag, rank) against ``relevant`` (user_id, tag): the tags of each user's
    clicked articles. Users without relevant tags are not in ``relevant``; a method's users
    without a hit add 0."""
    n_rel = relevant.groupBy("user_id").agg(F.count("*").alias("_n"))
    gain = 1.0 / F.log2(F.col("rank") + 1)
    at = {k: F.col("rank") <= k for k in TAG_KS}
    per_user = (every.where(F.col("rank") <= max(TAG_KS)).join(relevant, ["user_id", "tag"])
                .groupBy("method", "user_id")
                .agg(*[F.count(F.when(at[k], 1)).alias(f"_h{k}") for k in TAG_KS],
                     *[F.sum(F.when(at[k], gain).otherwise(0.0)).alias(f"_d{k}") for k in TAG_KS])
                .join(n_rel, "user_id"))

    def ideal(k: int):  # the DCG of a perfect list: min(K, relevant tags) hits at the top
        cumulative = [sum(1.0 / math.log2(i + 2) for i in range(j + 1)) for j in range(k)]
        return F.element_at(F.array(*[F.lit(c) for c in cumulative]), F.least(F.col("_n"), F.lit(k)).cast("int"))

    sums = per_user.groupBy("method").agg(
        *[F.sum(F.col(f"_h{k}") / k).alias(f"tag_precision_at_{k}") for k in TAG_KS],
        *[F.sum(F.col(f"_h{k}") / F.col("_n")).alias(f"tag_recall_at_{k}") for k in TAG_KS],
        *[F.sum(F.col(f"_d{k}") / ideal(k)).alias(f"tag_ndcg_at_{k}") for k in TAG_KS]).collect()
    return {r["method"]: {m: float(v) for m, v in r.asDict().items() if m != "method"} for r in sums}


def tag_metric_names() -> list[tuple[str, int]]:
    """(metric, K) of tag_prediction, in the order the table keeps them."""
    return [(f"tag_{m}_at_{k}", k) for m in ("precision", "recall", "ndcg") for k in TAG_KS]


def _row(method: str, metric: str, top_n: int, k: int | None, num: float, den: float) -> dict:
    return {"method": method, "metric": metric, "top_n": top_n, "k": k,
            "value": num / den if den else None, "numerator": float(num), "denominator": float(den)}


def evaluate(spark: SparkSession, config: Config, date: dt.date) -> list[dict]:
    wh = Warehouse(spark, config)
    day, nxt = date.isoformat(), (date + dt.timedelta(days=1)).isoformat()
    events = wh.read_partition("events", nxt, f" (evaluating {day} needs the events of the next day)")
    events = (events.where(F.col("event_type").isin("impression", "click"))
              .select("user_id", "article_id", "event_type").withColumn("_eid", F.monotonically_increasing_id())
              .persist())
    article_tags = wh.read_partition("articles", nxt).select("article_id", F.explode("tags.tag").alias("tag"))
    event_tags = events.join(article_tags, "article_id").select("_eid", "user_id", "tag", "event_type").persist()
    clicks = events.where(F.col("event_type") == "click").select("user_id", "article_id").distinct().persist()
    totals = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    n_imp, n_click, n_pairs = totals.get("impression", 0), totals.get("click", 0), clicks.count()
    users = events.select("user_id").distinct()
    served_n, tag_n, k = config.export.top_n, config.evaluate.top_n, config.evaluate.recall_k
    learned, model = (wh.read_partition(t, day) if wh.has_partition(t, day) else None
                      for t in ("user_tag_scores", "model_top_tags"))
    tag_stats = wh.read_partition("tag_stats", day)
    lists = method_lists(wh.read_partition("user_top_tags", day), wh.read_partition("user_tag_profile", day),
                         tag_stats, users, max(served_n, tag_n, *TAG_KS), config, learned, model)
    # The union has one partition per partition of each method's lists (the methods x the
    # shuffle partitions): every later pass over it would run that many tasks. Coalesced
    # without a shuffle to the session's shuffle partitions: about a quarter less time for
    # the step on the demo's day (README, "Benchmarks", "Evaluate").
    every = stacked(lists).coalesce(int(spark.conf.get("spark.sql.shuffle.partitions"))).persist()
    relevant = event_tags.where(F.col("event_type") == "click").select("user_id", "tag").distinct().persist()
    n_relevant = relevant.select("user_id").distinct().count()
    predicted = tag_prediction(every, relevant)
    vocabulary = tag_stats.select("tag").distinct().count()
    covered = {r["method"]: r["tags"] for r in every.where(F.col("rank") <= served_n).groupBy("method")
               .agg(F.countDistinct("tag").alias("tags")).collect()}
    # The tag metrics: D+1's events whose article carries one of the user's top tag_n tags.
    tagged = (event_tags.join(every.where(F.col("rank") <= tag_n), ["user_id", "tag"])
              .select("method", "_eid", "event_type").distinct()
              .groupBy("method", "event_type").count().collect())
    hits = {(r["method"], r["event_type"]): r["count"] for r in tagged}
    got = recall_hits(every.where(F.col("rank") <= served_n), clicks, wh.read_partition("tag_index", day), k,
                      list(lists))
    rows = [_row("all", "ctr", 0, None, n_click, n_imp)]
    for method in (m for m in METHODS if m in lists):
        hit_imp, hit_click = hits.get((method, "impression"), 0), hits.get((method, "click"), 0)
        rows += [_row(method, "recall_at_k", served_n, k, got[method], n_pairs),
                 _row(method, "click_coverage", tag_n, None, hit_click, n_click),
                 _row(method, "tagged_impressions", tag_n, None, hit_imp, n_imp),
                 _row(method, "tag_ctr", tag_n, None, hit_click, hit_imp)]
        rows += [_row(method, metric, k, k, predicted.get(method, {}).get(metric, 0.0), n_relevant)
                 for metric, k in tag_metric_names()]
        rows.append(_row(method, "tag_coverage", served_n, None, covered.get(method, 0), vocabulary))
    for df in (events, event_tags, clicks, every, relevant):
        df.unpersist()
    return rows


def skip_reason(spark: SparkSession, config: Config, date: dt.date) -> str | None:
    """Evaluating D needs D's user_top_tags and the events of D+1."""
    wh, nxt = Warehouse(spark, config), (date + dt.timedelta(days=1)).isoformat()
    missing = [f"{t} of {d}" for t, d in (("user_top_tags", date.isoformat()), ("events", nxt))
               if not wh.has_partition(t, d)]
    return f"no {' and no '.join(missing)}" if missing else None


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    started = time.monotonic()
    wh = Warehouse(spark, config)
    day = date.isoformat()
    rows = evaluate(spark, config, date)
    wh.write_partition(spark.createDataFrame(rows, RECALL_EVAL), TABLE, day)
    model_version = (wh.read_partition("user_top_tags", day).select("model_version").limit(1).collect()
                     or [{"model_version": None}])[0]["model_version"]
    report = {"step": NAME, "date": day, "status": "succeeded", "against": (date + dt.timedelta(days=1)).isoformat(),
              "model_version": model_version, "rows": rows, "rows_written": {TABLE: len(rows)},
              "seconds": round(time.monotonic() - started, 3), "config": config.to_dict()}
    wh.write_run_report(NAME, day, report)
    log.debug("evaluate %s against %s: %s", day, report["against"], ", ".join(
        f"{r['method']} {r['metric']} {r['value']:.3f}" for r in rows if r["value"] is not None
        and r["metric"] == "recall_at_k"))
    return report


def format_eval(rows: list[dict]) -> str:
    """One line per method: the four metrics side by side."""
    metrics = ("recall_at_k", "click_coverage", "tagged_impressions", "tag_ctr")
    by = {(r["method"], r["metric"]): r for r in rows}
    first = {m: next((r for r in rows if r["metric"] == m), None) for m in metrics}
    heads = [f"recall@{first['recall_at_k']['k']}" if first["recall_at_k"] else "recall@k",
             *(f"{m.replace('_', ' ')} N={first[m]['top_n']}" if first[m] else m for m in metrics[1:])]
    lines = [f"{'method':<10}" + "".join(f"{h:>26}" for h in heads)]
    for method in (m for m in METHODS if (m, "recall_at_k") in by):
        vals = [by.get((method, m), {}).get("value") for m in metrics]
        lines.append(f"{method:<10}" + "".join(f"{'n/a' if v is None else f'{v:.4f}':>26}" for v in vals))
    tag_metrics = ("tag_precision_at_5", "tag_recall_at_5", "tag_ndcg_at_5", "tag_ndcg_at_10", "tag_coverage")
    if any((m, "tag_ndcg_at_5") in by for m in METHODS):
        lines.append("tag prediction (users with a tagged click on the next day, whole vocabulary):")
        lines.append(f"{'method':<10}" + "".join(f"{h:>14}" for h in ("P@5", "R@5", "NDCG@5", "NDCG@10", "coverage")))
        for method in (m for m in METHODS if (m, "tag_ndcg_at_5") in by):
            vals = [by.get((method, m), {}).get("value") for m in tag_metrics]
            lines.append(f"{method:<10}" + "".join(f"{'n/a' if v is None else f'{v:.4f}':>14}" for v in vals))
    ctr = by.get(("all", "ctr"), {}).get("value")
    if ctr is not None:
        lines.append(f"(click-through rate of all impressions: {ctr:.4f})")
    return "\n".join(lines)


STEP = Step(NAME, run, skip_reason=skip_reason, summary="D's recall against D+1's clicks, with baselines")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
