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
  served to users without tags);
- ``popular_items``: not a tag method but the channel every feed already has: D's k articles
  with the most decayed clicks (half-life evaluate.popular_half_life_days, over the index's
  window of events), the same list for every user (jobs/transforms/item_ranking.py).

Metrics (numerator and denominator are kept beside each value):

- ``recall_at_k`` (k = evaluate.recall_k, the method's export.top_n tags): the share of the
  distinct (user, article) clicks of D+1 that the recall would have returned: the user's
  tags x D's tag_index, merged exactly as jobs/online/recall.py merges them, top k
  (in numpy, jobs/online/bulk.py, one row of lists and clicks per clicking user), with the
  merge of recall.merge; for ``popular_items``, the clicks on its k articles, and
  ``recall_at_2k`` on its 2k articles;
- ``union_recall_at_k``: the channel's increment: the share of the clicks that
  ``popular_items``@k and the method's k articles return together, to be read beside
  ``popular_items``' ``recall_at_2k`` (the same number of slots);
- ``new_article_recall_at_k``: recall_at_k over the clicks on new articles only: first
  published or first shown within index.new_article_days of the end of D (shown first on
  D+1 included), where popularity cannot reach;
- method ``all``, ``index_ceiling`` and ``new_article_index_ceiling``: the share of the
  clicks (of those on new articles) whose article is in D's tag_index at all;
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
from dataclasses import dataclass
from functools import reduce

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.dates import day_bounds
from jobs.common.entry import Step
from jobs.common.storage import Warehouse
from jobs.online.bulk import Index, click_groups_of, top_k_hits
from jobs.transforms.decay import age_seconds
from jobs.transforms.item_ranking import article_engagement, is_new, popular_items
from jobs.transforms.tag_lists import BASELINES, baseline, filled, global_tags
from schemas.config import Config
from schemas.tables import RECALL_EVAL

log = logging.getLogger(__name__)

NAME = "evaluate"
TABLE = "recall_eval"
POPULAR = "popular_items"
METHODS = ("export", "model", "tag_model", *BASELINES, POPULAR)

RECALLED = "method string, click_group int, hits long"
# A clicked article's group: bit 0 set when it is in popular_items@k, bit 1 when it is new.
IN_POPULAR, NEW = 1, 2
TAG_KS = (1, 3, 5, 10)


def stacked(lists: dict[str, DataFrame]) -> DataFrame:
    """(method, user_id, tag, rank): every method's lists in one DataFrame."""
    return reduce(DataFrame.unionByName, (df.select(F.lit(m).alias("method"), "user_id", "tag", "rank")
                                          for m, df in lists.items()))


def index_of(tag_index: DataFrame) -> Index:
    """D's tag_index (what Redis holds) laid out for the merge, in the driver."""
    rows = tag_index.select("tag", "article_id", "score").collect()
    return Index.build([r["tag"] for r in rows], [r["article_id"] for r in rows], [r["score"] for r in rows])


def recall_query(lists: DataFrame, clicks: DataFrame, index: Index, k: int, methods: list[str],
                 merge: str = "rank_sum", groups: np.ndarray | None = None) -> DataFrame:
    """(method, click_group, hits): how many of D+1's distinct (user, article) ``clicks`` the
    recall of jobs.online.recall.merge (``merge``) returns in its top ``k`` over ``index``,
    for the lists (method, user_id, tag, rank) of ``methods``, per group of the clicked
    article (``groups``, one per index column; all 0 when None). The users' lists and clicks travel
    together, one row per clicking user; the index (at most index.top_k articles a tag,
    what Redis holds) goes to every Python worker, where jobs/online/bulk.py merges the
    lists in numpy."""
    per_user = (lists.groupBy("user_id").agg(F.collect_list(F.struct("method", "tag", "rank")).alias("tags"))
                .join(clicks.groupBy("user_id").agg(F.collect_list("article_id").alias("clicked")), "user_id"))
    groups = np.zeros(index.width, dtype=np.int64) if groups is None else groups
    return (per_user.mapInArrow(_hits_of_batches(index, groups, sorted(methods), k, merge), RECALLED)
            .groupBy("method", "click_group").agg(F.sum("hits").alias("hits")))


def recall_hits(lists: DataFrame, clicks: DataFrame, index: Index, k: int, methods: list[str],
                merge: str = "rank_sum", groups: np.ndarray | None = None) -> dict[str, dict[int, int]]:
    """recall_query's hits per method and click group, {} for a method no clicking user has."""
    got: dict[str, dict[int, int]] = {m: {} for m in methods}
    for r in recall_query(lists, clicks, index, k, methods, merge, groups).collect():
        got[r["method"]][r["click_group"]] = int(r["hits"])
    return got


def _hits_of_batches(index: Index, groups: np.ndarray, methods: list[str], k: int, merge: str):
    """A mapInArrow function: rows (user_id, tags: [(method, tag, rank)], clicked: [article_id])
    -> (method, click_group, hits) for each method and group, summed over the batch."""
    n_groups = IN_POPULAR + NEW + 1

    def hits(batches):
        import pyarrow as pa
        import pyarrow.compute as pc

        for batch in batches:
            tags, clicked = batch.column("tags"), batch.column("clicked")
            entries = tags.flatten()
            user = pc.list_parent_indices(tags).to_numpy()
            method = pc.index_in(entries.field("method"), value_set=pa.array(methods)).to_numpy().astype(np.int64)
            click_user = pc.list_parent_indices(clicked).to_numpy()
            click_columns = index.columns_of(clicked.flatten().to_pylist())
            click_groups = click_groups_of(groups, click_columns)
            n = len(methods)
            per_list = top_k_hits(  # list i is user i // n under method i % n
                index, batch.num_rows * n, user * n + method, index.rows_of(entries.field("tag").to_pylist()),
                entries.field("rank").to_numpy(zero_copy_only=False).astype(np.int64),
                np.repeat(click_user * n, n) + np.tile(np.arange(n), len(click_user)),
                np.repeat(click_columns, n), k, method=merge, click_groups=np.repeat(click_groups, n),
                n_groups=n_groups)
            summed = per_list.reshape(-1, n, n_groups).sum(axis=0)  # (method, group)
            yield pa.record_batch([pa.array(np.repeat(methods, n_groups).tolist()),
                                   pa.array(np.tile(np.arange(n_groups, dtype=np.int32), n)),
                                   pa.array(summed.reshape(-1))], names=["method", "click_group", "hits"])

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
    index = index_of(wh.read_partition("tag_index", day))
    channel = item_channel(clicked_articles(wh, config, date, clicks, k), index, k)
    got = recall_hits(every.where(F.col("rank") <= served_n), clicks, index, k, list(lists), config.recall.merge,
                      channel.groups)
    rows = [_row("all", "ctr", 0, None, n_click, n_imp),
            _row("all", "index_ceiling", 0, None, channel.indexed, n_pairs),
            _row("all", "new_article_index_ceiling", 0, None, channel.new_indexed, channel.new_pairs),
            _row(POPULAR, "recall_at_k", 0, k, channel.popular, n_pairs),
            _row(POPULAR, "recall_at_2k", 0, 2 * k, channel.popular_2k, n_pairs),
            _row(POPULAR, "new_article_recall_at_k", 0, k, channel.new_popular, channel.new_pairs)]
    for method in (m for m in METHODS if m in lists):
        hit_imp, hit_click = hits.get((method, "impression"), 0), hits.get((method, "click"), 0)
        by_group = got[method]
        outside_popular = sum(h for g, h in by_group.items() if not g & IN_POPULAR)
        rows += [_row(method, "recall_at_k", served_n, k, sum(by_group.values()), n_pairs),
                 _row(method, "union_recall_at_k", served_n, k, channel.popular + outside_popular, n_pairs),
                 _row(method, "new_article_recall_at_k", served_n, k,
                      sum(h for g, h in by_group.items() if g & NEW), channel.new_pairs),
                 _row(method, "click_coverage", tag_n, None, hit_click, n_click),
                 _row(method, "tagged_impressions", tag_n, None, hit_imp, n_imp),
                 _row(method, "tag_ctr", tag_n, None, hit_click, hit_imp)]
        rows += [_row(method, metric, k, k, predicted.get(method, {}).get(metric, 0.0), n_relevant)
                 for metric, k in tag_metric_names()]
        rows.append(_row(method, "tag_coverage", served_n, None, covered.get(method, 0), vocabulary))
    for df in (events, event_tags, clicks, every, relevant):
        df.unpersist()
    return rows


@dataclass(frozen=True)
class ItemChannel:
    """What the item-level view of D+1's distinct click pairs needs: counts, and the click
    group (IN_POPULAR, NEW bits) of each article of the index (``Index`` column order)."""

    groups: np.ndarray
    popular: int       # pairs on an article of popular_items@k
    popular_2k: int    # ... of popular_items@2k
    new_pairs: int     # pairs on a new article
    new_popular: int   # pairs on a new article of popular_items@k
    indexed: int       # pairs on an article in D's tag_index
    new_indexed: int   # pairs on a new article in D's tag_index


@dataclass(frozen=True)
class ClickedArticle:
    new: bool
    popular: int | None  # its rank in popular_items@2k, None when not in it
    pairs: int           # distinct users who clicked it on D+1


def clicked_articles(wh: Warehouse, config: Config, date: dt.date, clicks: DataFrame, k: int
                     ) -> dict[str, ClickedArticle]:
    """Every article of D+1's ``clicks`` (user_id, article_id): whether it is new and its rank
    in D's popular_items@2k. popular_items ranks D's events in the index's window (no later
    event); whether an article is new also looks at D+1 (first shown then is new)."""
    cfg = config.index
    _, end = day_bounds(date, config.time.timezone)
    window = [(date - dt.timedelta(days=i)).isoformat() for i in range(cfg.quality_window_days)]
    engagement = article_engagement(wh.read_partitions("events", window), end, cfg.quality_half_life_days,
                                    config.evaluate.popular_half_life_days)
    popular = popular_items(engagement, 2 * k).select("article_id", F.col("rank").alias("popular"))
    nxt = (date + dt.timedelta(days=1)).isoformat()
    later = wh.read_partition("events", nxt).where(F.col("event_type").isin("impression", "click"))
    first_shown = (engagement.select("article_id", "first_shown")
                   .unionByName(later.groupBy("article_id").agg(F.min("event_time").alias("first_shown")))
                   .groupBy("article_id").agg(F.min("first_shown").alias("first_shown")))
    new = is_new(age_seconds(F.col("publish_time"), end.timestamp()), F.col("first_shown"), end, cfg.new_article_days)
    facts = (clicks.groupBy("article_id").agg(F.count(F.lit(1)).alias("pairs"))
             .join(wh.read_partition("articles", nxt).select("article_id", "publish_time"), "article_id", "left")
             .join(first_shown, "article_id", "left")
             .join(F.broadcast(popular), "article_id", "left")
             .select("article_id", F.coalesce(new, F.lit(False)).alias("new"), "popular", "pairs"))
    return {r["article_id"]: ClickedArticle(r["new"], r["popular"], r["pairs"]) for r in facts.collect()}


def item_channel(clicked: dict[str, ClickedArticle], index: Index, k: int) -> ItemChannel:
    """The counts of ``ItemChannel`` and the click group of each article of ``index``."""
    groups = np.zeros(index.width, dtype=np.int64)
    for column, article in enumerate(index.article_ids.tolist()):
        if article in clicked:
            c = clicked[article]
            groups[column] = (IN_POPULAR if c.popular and c.popular <= k else 0) | (NEW if c.new else 0)
    indexed = set(index.article_ids.tolist())
    counts = dict.fromkeys(("popular", "popular_2k", "new_pairs", "new_popular", "indexed", "new_indexed"), 0)
    for article, c in clicked.items():
        top_k, in_index = bool(c.popular and c.popular <= k), article in indexed
        counts["popular"] += c.pairs * top_k
        counts["popular_2k"] += c.pairs * (c.popular is not None)
        counts["new_pairs"] += c.pairs * c.new
        counts["new_popular"] += c.pairs * (c.new and top_k)
        counts["indexed"] += c.pairs * in_index
        counts["new_indexed"] += c.pairs * (c.new and in_index)
    return ItemChannel(groups, **counts)


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
    """One line per method: the channel's metrics and the tag metrics side by side, then the
    item-popularity channel beside them and the index's ceiling."""
    by = {(r["method"], r["metric"]): r for r in rows}

    def shown(method: str, metric: str, width: int) -> str:
        v = by.get((method, metric), {}).get("value")
        return f"{'n/a' if v is None else f'{v:.4f}':>{width}}"

    metrics = ("recall_at_k", "union_recall_at_k", "new_article_recall_at_k", "click_coverage",
               "tagged_impressions", "tag_ctr")
    first = {m: next((r for r in rows if r["metric"] == m and r["method"] != POPULAR), None) for m in metrics}
    k = first["recall_at_k"]["k"] if first["recall_at_k"] else "k"
    heads = [f"recall@{k}", f"+popular@{k}", f"new recall@{k}",
             *(f"{m.replace('_', ' ')} N={first[m]['top_n']}" if first[m] else m for m in metrics[3:])]
    lines = [f"{'method':<14}" + "".join(f"{h:>24}" for h in heads)]
    for method in (m for m in METHODS if m != POPULAR and (m, "recall_at_k") in by):
        lines.append(f"{method:<14}" + "".join(shown(method, m, 24) for m in metrics))
    if (POPULAR, "recall_at_k") in by:
        lines.append(f"{POPULAR:<14}" + shown(POPULAR, "recall_at_k", 24) + f"{'(@2k)':>18}"
                     + shown(POPULAR, "recall_at_2k", 6) + shown(POPULAR, "new_article_recall_at_k", 24))
    if ("all", "index_ceiling") in by:
        lines.append(f"(clicks on an article of the index: {shown('all', 'index_ceiling', 0).strip()}; "
                     f"of the clicks on new articles: {shown('all', 'new_article_index_ceiling', 0).strip()})")
    tag_metrics = ("tag_precision_at_5", "tag_recall_at_5", "tag_ndcg_at_5", "tag_ndcg_at_10", "tag_coverage")
    if any((m, "tag_ndcg_at_5") in by for m in METHODS):
        lines.append("tag prediction (users with a tagged click on the next day, whole vocabulary):")
        lines.append(f"{'method':<14}" + "".join(f"{h:>14}" for h in ("P@5", "R@5", "NDCG@5", "NDCG@10", "coverage")))
        for method in (m for m in METHODS if (m, "tag_ndcg_at_5") in by):
            lines.append(f"{method:<14}" + "".join(shown(method, m, 14) for m in tag_metrics))
    ctr = by.get(("all", "ctr"), {}).get("value")
    if ctr is not None:
        lines.append(f"(click-through rate of all impressions: {ctr:.4f})")
    return "\n".join(lines)


STEP = Step(NAME, run, skip_reason=skip_reason, summary="D's recall against D+1's clicks, with baselines")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
