"""How good the profiles are, measured two ways (``tagrecall profile-eval``).

Next-day prediction (any data): for the users who click on D+1, does D's profile name the
tags of what they click? For each method and N, over the clicks of D+1 (user, article):

- ``click_coverage``: the share of clicks whose article (as of D+1's snapshot) carries at
  least one of the user's top-N tags;
- ``user_hit_rate``: the share of clicking users with at least one such click.

Methods (jobs/transforms/tag_lists.py): ``long`` and ``short`` rank the user's tags by that
horizon's weight; ``blend`` by 0.5 x (long weight / the user's long total) + 0.5 x (short
weight / the user's short total);
``global`` gives everyone the N tags most clicked on D (a non-personal baseline). A user
whose profile has fewer than N tags with a positive weight (or no profile) gets the list
filled up with the global tags not already in it, as the export step does: every method
names N tags for every user, so the comparison is between equally long lists.

Planted-interest recovery (synthetic data only, from ``<raw>/_truth``): for users with at
least ``min_clicks`` decayed clicks in their profile, the mean of
``|top-3 profile tags by long weight ∩ top-3 planted long interests| / 3`` and the
precision@3 of those tags against all planted interests on D (long and that day's short
ones), each next to the same figures for the 3 globally strongest tags and, when the
tag_model step wrote D's user_tag_scores, for the user-tag model's learned interest profile
(the top 3 of the user's scored tags by interest; precision@3 also for the top 3 by score).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common.storage import Warehouse
from jobs.profiles import TABLE
from jobs.transforms.tag_lists import PROFILE_RANKINGS, filled, global_list, ranked_tags
from schemas.config import Config

METHODS = (*PROFILE_RANKINGS, "global")


def most_clicked_tags(events: DataFrame, articles: DataFrame, top_n: int) -> list[str]:
    tags = articles.select("article_id", F.explode("tags.tag").alias("tag"))
    counts = (events.where(F.col("event_type") == "click").join(tags, "article_id")
              .groupBy("tag").count().orderBy(F.desc("count"), "tag").limit(top_n).collect())
    return [r["tag"] for r in counts]


def next_day_hit_rates(spark: SparkSession, config: Config, date: dt.date, top_ns: list[int]) -> list[dict]:
    """Rows {date, method, top_n, click_coverage, user_hit_rate, clicks, users}."""
    wh = Warehouse(spark, config)
    day, nxt = date.isoformat(), (date + dt.timedelta(days=1)).isoformat()
    profile = wh.read_partition(TABLE, day)
    clicks = (wh.read_partition("events", nxt).where(F.col("event_type") == "click")
              .select("user_id", "article_id").withColumn("_click", F.monotonically_increasing_id()))
    clicks = clicks.persist()
    click_tags = clicks.join(wh.read_partition("articles", nxt).select("article_id", F.explode("tags.tag").alias("tag")),
                             "article_id")
    n_clicks = clicks.count()
    n_users = clicks.select("user_id").distinct().count()
    today_events, today_articles = wh.read_partition("events", day), wh.read_partition("articles", day)
    clickers = clicks.select("user_id").distinct()
    rows = []
    for n in top_ns:
        top_global = most_clicked_tags(today_events, today_articles, n)
        lists = {m: filled(ranked_tags(profile, m, n), clickers, top_global, n)
                 for m in PROFILE_RANKINGS}
        lists["global"] = global_list(clickers, top_global)
        for method in METHODS:
            hits = click_tags.join(lists[method].select("user_id", "tag"), ["user_id", "tag"]).select(
                "_click", "user_id").distinct()
            hit_clicks = hits.count()
            hit_users = hits.select("user_id").distinct().count()
            rows.append({"date": day, "method": method, "top_n": n, "clicks": n_clicks, "users": n_users,
                         "click_coverage": hit_clicks / n_clicks if n_clicks else None,
                         "user_hit_rate": hit_users / n_users if n_users else None})
    clicks.unpersist()
    return rows


def format_hit_rates(rows: list[dict]) -> str:
    lines = [f"{'date':<12}{'N':>4}  {'method':<8}{'click coverage':>16}{'user hit rate':>15}{'clicks':>9}{'users':>7}"]
    for r in rows:
        cov = "n/a" if r["click_coverage"] is None else f"{r['click_coverage']:.3f}"
        hit = "n/a" if r["user_hit_rate"] is None else f"{r['user_hit_rate']:.3f}"
        lines.append(f"{r['date']:<12}{r['top_n']:>4}  {r['method']:<8}{cov:>16}{hit:>15}{r['clicks']:>9,}{r['users']:>7,}")
    return "\n".join(lines)


def planted_recovery(spark: SparkSession, config: Config, date: dt.date, truth_dir: str | Path,
                     min_clicks: float = 20.0) -> dict:
    """Recovery of the synthetic generator's planted interests by D's profile (module docstring)."""
    truth = Path(truth_dir)
    long_rows, short_rows = [], []
    with open(truth / "users.jsonl") as fh:
        for line in fh:
            rec = json.loads(line)
            ranked = sorted(rec["long_interests"].items(), key=lambda kv: (-kv[1], kv[0]))
            long_rows += [(rec["user_id"], t, i + 1) for i, (t, _) in enumerate(ranked)]
    short_file = truth / "short_interests" / f"dt={date.isoformat()}.jsonl"
    if short_file.exists():
        with open(short_file) as fh:
            for line in fh:
                rec = json.loads(line)
                short_rows += [(rec["user_id"], t) for t in rec["short_interests"]]
    planted_long = spark.createDataFrame(long_rows, "user_id string, tag string, truth_rank int")
    planted_all = planted_long.select("user_id", "tag").unionByName(
        spark.createDataFrame(short_rows, "user_id string, tag string")).distinct()
    profile = Warehouse(spark, config).read_partition(TABLE, date.isoformat())
    users = (profile.groupBy("user_id").agg(F.sum("clicks").alias("c")).where(F.col("c") >= min_clicks)
             .select("user_id"))
    top3 = ranked_tags(profile, "long", 3).join(users, "user_id")
    strongest = [r["tag"] for r in profile.groupBy("tag").agg(F.sum("long_weight").alias("w"))
                 .orderBy(F.desc("w"), "tag").limit(3).collect()]
    global3 = users.crossJoin(spark.createDataFrame([(t,) for t in strongest], "tag string"))
    n_users = users.count()

    def mean_hits(tags: DataFrame, truth_tags: DataFrame) -> float | None:
        if not n_users:
            return None
        return tags.join(truth_tags.select("user_id", "tag"), ["user_id", "tag"]).count() / (3 * n_users)

    truth_top3 = planted_long.where(F.col("truth_rank") <= 3)
    out = {"date": date.isoformat(), "users": n_users, "min_clicks": min_clicks,
           "top3_overlap_long": mean_hits(top3, truth_top3),
           "top3_overlap_long_global": mean_hits(global3, truth_top3),
           "precision3_all": mean_hits(top3, planted_all),
           "precision3_all_global": mean_hits(global3, planted_all)}
    wh = Warehouse(spark, config)
    if wh.has_partition("user_tag_scores", date.isoformat()):
        scored = wh.read_partition("user_tag_scores", date.isoformat()).join(users, "user_id")
        by_score = scored.where(F.col("rank") <= 3).select("user_id", "tag")
        # The learned interest profile: the scored tags by interest (lift over the average
        # user), or by score for a model saved without a prior.
        order = Window.partitionBy("user_id").orderBy(F.desc_nulls_last("interest"), "rank")
        by_interest = scored.withColumn("_r", F.row_number().over(order)).where(F.col("_r") <= 3).select("user_id", "tag")
        out |= {"top3_overlap_long_learned": mean_hits(by_interest, truth_top3),
                "precision3_all_learned": mean_hits(by_interest, planted_all),
                "precision3_all_learned_by_score": mean_hits(by_score, planted_all)}
    return out


def format_recovery(r: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    def learned(key):
        if key + "_learned" not in r:
            return ""
        by_score = r.get(key + "_learned_by_score")
        return (f"user-tag model by interest {f(r[key + '_learned'])}"
                + (f" (by score {f(by_score)})" if by_score is not None else "") + ", ")

    return (f"planted-interest recovery at {r['date']} ({r['users']:,} users with >= {r['min_clicks']:g} "
            f"decayed clicks):\n"
            f"  top-3 overlap with planted long top-3: profile {f(r['top3_overlap_long'])}, "
            f"{learned('top3_overlap_long')}3 globally strongest tags {f(r['top3_overlap_long_global'])}\n"
            f"  precision@3 against all planted interests: profile {f(r['precision3_all'])}, "
            f"{learned('precision3_all')}3 globally strongest tags {f(r['precision3_all_global'])}")
