"""Evaluate step: D's recall against D+1's behaviour -> ``recall_eval`` (partition D).

For the users active on D+1 (any event), every method names each user's tags; a user a
method has no tags for gets the global list, as the online recall does (jobs/online/recall.py):

- ``export``: D's ``user_top_tags`` (the model's ranking, or the profile blend without one);
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
  tags x D's tag_index, merged exactly as jobs/online/recall.py merges them, top k;
- ``click_coverage`` (top evaluate.top_n tags): the share of D+1's clicks whose article (D+1's
  snapshot) carries one of the user's tags;
- ``tagged_impressions`` and ``tag_ctr``, the two profile metrics of WeChat's user-tag
  paper: the share of D+1's impressions whose article carries one of the user's top-N
  tags, and the clicks on such articles over those impressions;
- method ``all`` holds the plain click-through rate of D+1 as their reference.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.entry import Step
from jobs.common.storage import Warehouse
from jobs.online.recall import ROUND
from jobs.transforms.tag_lists import (
    PROFILE_RANKINGS,
    filled,
    global_list,
    global_tags,
    mix,
    ranked_tags,
    top_k_per_key,
)
from schemas.config import Config
from schemas.tables import RECALL_EVAL

log = logging.getLogger(__name__)

NAME = "evaluate"
TABLE = "recall_eval"
METHODS = ("export", "tag_model", "long", "short", "blend", "mix", "global")


def rank_weight(rank: F.Column) -> F.Column:
    """jobs.online.recall.rank_weight as a column: 1 / log2(1 + rank)."""
    return F.lit(1.0) / (F.log(1.0 + rank.cast("double")) / F.lit(math.log(2.0)))


def recalled(lists: DataFrame, tag_index: DataFrame, k: int) -> DataFrame:
    """(user_id, article_id, score, position): jobs.online.recall.merge for every user of
    ``lists`` (user_id, tag, rank) over ``tag_index``."""
    merged = (lists.join(tag_index.select("tag", "article_id", "score"), "tag")
              .groupBy("user_id", "article_id")
              .agg(F.round(F.sum(rank_weight(F.col("rank")) * F.col("score")), ROUND).alias("score")))
    return top_k_per_key(merged, "user_id", [F.desc("score"), "article_id"], k, rank_col="position")


def method_lists(served: DataFrame, profile: DataFrame, tag_stats: DataFrame, users: DataFrame,
                 top_n: int, config: Config, learned: DataFrame | None = None) -> dict[str, DataFrame]:
    """(user_id, tag, rank) with ``top_n`` tags for every user of ``users``, per method:
    ``served`` is D's user_top_tags, ``learned`` D's user_tag_scores (None when absent),
    ``profile`` and ``tag_stats`` D's tables."""
    everyone = global_list(users, global_tags(tag_stats, top_n))

    def ranked(df: DataFrame) -> DataFrame:
        return filled(df.where(F.col("rank") <= top_n).select("user_id", "tag", "rank").join(users, "user_id"),
                      everyone, top_n)

    lists = {"export": ranked(served)}
    if learned is not None:
        lists["tag_model"] = ranked(learned)
    for method in PROFILE_RANKINGS:
        lists[method] = filled(ranked_tags(profile, method, top_n).join(users, "user_id"), everyone, top_n)
    lists["mix"] = filled(mix(profile, tag_stats, users, top_n, config.evaluate.mix_click_weight,
                              config.evaluate.mix_global_tags), everyone, top_n)
    lists["global"] = everyone
    return lists


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
    learned = wh.read_partition("user_tag_scores", day) if wh.has_partition("user_tag_scores", day) else None
    lists = {m: df.persist() for m, df in method_lists(
        wh.read_partition("user_top_tags", day), wh.read_partition("user_tag_profile", day),
        wh.read_partition("tag_stats", day), users, max(served_n, tag_n), config, learned).items()}
    tag_index = wh.read_partition("tag_index", day)
    rows = [_row("all", "ctr", 0, None, n_click, n_imp)]
    for method in (m for m in METHODS if m in lists):
        tagged = (event_tags.join(lists[method].where(F.col("rank") <= tag_n).select("user_id", "tag"),
                                  ["user_id", "tag"]).select("_eid", "event_type").distinct())
        hits = {r["event_type"]: r["count"] for r in tagged.groupBy("event_type").count().collect()}
        hit_imp, hit_click = hits.get("impression", 0), hits.get("click", 0)
        got = (recalled(lists[method].where(F.col("rank") <= served_n), tag_index, k)
               .join(clicks, ["user_id", "article_id"]).count())
        rows += [_row(method, "recall_at_k", served_n, k, got, n_pairs),
                 _row(method, "click_coverage", tag_n, None, hit_click, n_click),
                 _row(method, "tagged_impressions", tag_n, None, hit_imp, n_imp),
                 _row(method, "tag_ctr", tag_n, None, hit_click, hit_imp)]
    for df in (events, event_tags, clicks, *lists.values()):
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
    ctr = by.get(("all", "ctr"), {}).get("value")
    if ctr is not None:
        lines.append(f"(click-through rate of all impressions: {ctr:.4f})")
    return "\n".join(lines)


STEP = Step(NAME, run, skip_reason=skip_reason, summary="D's recall against D+1's clicks, with baselines")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
