"""The tag channel as a feed judges it: every (index ranking, merge) option on a built warehouse,
chosen on validation days, reported on test days, beside item popularity.

    python bench/recall_channel.py --warehouse WH [--config jobs/conf/kuairand.toml]
        --validate 2022-04-27,2022-04-28 --test 2022-04-29,2022-04-30 [--lists export]
        [--label kuairand] [--results bench/results/recall_channel.jsonl]

For each day D the served lists (D's user_top_tags, or another method of evaluate with
--lists) of the users who click on D+1 are merged over D's index rebuilt under each option,
exactly as evaluate does (jobs/online/bulk.py, recall.merge), against D+1's distinct clicks:
recall@k, the union with popular_items@k (beside popular_items@2k), recall on new articles and
the index's ceiling. The search has two stages, both on the validation days only: every
ranking and setting without the quota under the two vectorised merges, then the three best
index settings under every merge and quota. The winner is the best mean recall@k on the
validation days among the options whose new-article recall is not below today's default
(quality ranking, rank_sum, no quota). The merge's latency is timed in Python on the winner's
and today's index for 200 users of the last test day. One JSON line per (option, day) goes to
--results, with the date, the commit and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from itertools import product
from pathlib import Path

import numpy as np

TODAY = {"ranking": "quality", "recent_half_life_days": 1.0, "top_k": 200,
         "new_article_slots": 0}
STAGE_ONE = [  # index settings searched without the quota
    *({"ranking": "quality", "top_k": k} for k in (200, 1000)),
    *({"ranking": "clicks", "recent_half_life_days": h, "top_k": k} for h in (0.25, 0.5, 1.0, 3.0) for k in (200, 1000)),
    *({"ranking": "exposure", "recent_half_life_days": h, "top_k": k} for h in (0.5, 1.0, 7.0) for k in (200, 1000)),
    *({"ranking": "learned", "top_k": k} for k in (200, 1000)),
]
SLOTS = (0, 10, 30)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Day:
    """One day's fixed inputs: the clicking users' lists and clicks, and D's tables."""

    def __init__(self, spark, config, date: dt.date, lists_from: str):
        from pyspark.sql import functions as F

        from jobs import evaluate
        from jobs.common.dates import day_bounds
        from jobs.common.storage import Warehouse

        self.date, self.config = date, config
        wh = self.wh = Warehouse(spark, config)
        day, nxt = date.isoformat(), (date + dt.timedelta(days=1)).isoformat()
        events = wh.read_partition("events", nxt).where(F.col("event_type").isin("impression", "click"))
        self.clicks = events.where(F.col("event_type") == "click").select("user_id", "article_id").distinct().cache()
        users = events.select("user_id").distinct()
        learned, model = (wh.read_partition(t, day) if wh.has_partition(t, day) else None
                          for t in ("user_tag_scores", "model_top_tags"))
        lists = evaluate.method_lists(wh.read_partition("user_top_tags", day), wh.read_partition("user_tag_profile", day),
                                      wh.read_partition("tag_stats", day), users, config.export.top_n, config,
                                      learned, model)[lists_from]
        rows = lists.join(self.clicks.select("user_id").distinct(), "user_id").collect()
        users_of = {u: i for i, u in enumerate(sorted({r["user_id"] for r in rows}))}
        self.n_users = len(users_of)
        self.list_of = np.array([users_of[r["user_id"]] for r in rows], dtype=np.int64)
        self.tags = [r["tag"] for r in rows]
        self.ranks = np.array([r["rank"] for r in rows], dtype=np.int64)
        clicked = [(users_of[r["user_id"]], r["article_id"]) for r in self.clicks.collect() if r["user_id"] in users_of]
        self.click_list = np.array([c[0] for c in clicked], dtype=np.int64)
        self.click_articles = [c[1] for c in clicked]
        self.pairs = self.clicks.count()
        self.articles = wh.read_partition("articles", day).cache()
        window = [(date - dt.timedelta(days=i)).isoformat() for i in range(config.index.quality_window_days)]
        self.events = wh.read_partitions("events", window).cache()
        self.end = day_bounds(date, config.time.timezone)[1]
        self._clicked: dict = {}  # filled on first use

    def clicked(self, config, k: int):
        """D+1's clicked articles (new or not, rank in popular_items): the same for every option."""
        from jobs import evaluate

        if not self._clicked:
            self._clicked = evaluate.clicked_articles(self.wh, config, self.date, self.clicks, k)
        return self._clicked

    def index(self, config):
        from jobs import index as index_step
        from jobs.online.bulk import Index

        cfg, learned, _ = index_step.ranking_inputs(self.wh, config, self.date, self.articles, self.events)
        engagement = index_step.engagement_of(self.events, self.end, cfg).cache()
        p0, mu0 = index_step.priors(engagement)
        scored = index_step.scored_articles(self.articles, engagement, self.end, cfg, p0, mu0, learned)
        rows = index_step.tag_index(scored, cfg).select("tag", "article_id", "score").collect()
        engagement.unpersist()
        return Index.build([r["tag"] for r in rows], [r["article_id"] for r in rows], [r["score"] for r in rows])


def measure(day: Day, config, index, merge: str, k: int) -> dict:
    from jobs import evaluate
    from jobs.online.bulk import click_groups_of, top_k_hits

    channel = evaluate.item_channel(day.clicked(config, k), index, k)
    columns = index.columns_of(day.click_articles)
    groups = click_groups_of(channel.groups, columns)
    hits = top_k_hits(index, day.n_users, day.list_of, index.rows_of(day.tags), day.ranks, day.click_list, columns,
                      k, method=merge, click_groups=groups, n_groups=evaluate.IN_POPULAR + evaluate.NEW + 1).sum(axis=0)
    outside = sum(int(h) for g, h in enumerate(hits) if not g & evaluate.IN_POPULAR)
    new_hits = sum(int(h) for g, h in enumerate(hits) if g & evaluate.NEW)

    def share(a, b):
        return a / b if b else None

    return {"recall": share(int(hits.sum()), day.pairs), "union": share(channel.popular + outside, day.pairs),
            "new_recall": share(new_hits, channel.new_pairs), "ceiling": share(channel.indexed, day.pairs),
            "popular": share(channel.popular, day.pairs), "popular_2k": share(channel.popular_2k, day.pairs),
            "popular_new": share(channel.new_popular, channel.new_pairs), "pairs": day.pairs,
            "new_pairs": channel.new_pairs, "index_rows": int(len(index.columns))}


def merge_latency_ms(day: Day, index, merge: str, k: int, users: int = 200) -> float:
    """Median milliseconds of recall.merge for one user, over ``users`` clicking users."""
    from jobs.online.recall import merge as merge_lists

    lists = index.lists()
    per_user: dict[int, list] = {}
    for i, tag, rank in zip(day.list_of.tolist(), day.tags, day.ranks.tolist(), strict=True):
        per_user.setdefault(i, []).append((tag, rank))
    times = []
    for tags in list(per_user.values())[:users]:
        started = time.perf_counter()
        merge_lists(tags, lists, k, merge)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--config", default="jobs/conf/kuairand.toml")
    parser.add_argument("--validate", required=True, help="comma-separated days D (evaluated against D+1)")
    parser.add_argument("--test", required=True, help="comma-separated days D, reported only")
    parser.add_argument("--lists", default="export", help="the method of evaluate whose tags are merged")
    parser.add_argument("--label", default="kuairand", help="the data set's name in the results")
    parser.add_argument("--results", default="bench/results/recall_channel.jsonl")
    parser.add_argument("--report-option", default="",
                        help='also report this option on every day, as JSON, e.g. \'{"ranking": "exposure", '
                             '"merge": "probability"}\' (the defaults of another data set); --search none skips the search')
    parser.add_argument("--search", default="yes", choices=("yes", "none"))
    parser.add_argument("--merges", default="rank_sum,probability,quota",
                        help="the merges of the second stage (quota merges list by list in Python: the slow one)")
    args = parser.parse_args()

    from jobs.common.session import build_session
    from schemas.config import load_config

    base = load_config(args.config or None, overrides={"storage": {"warehouse": args.warehouse}})
    spark = build_session(base, "bench-recall-channel")
    k = base.evaluate.recall_k
    validate = [dt.date.fromisoformat(d) for d in args.validate.split(",")]
    test = [dt.date.fromisoformat(d) for d in args.test.split(",")]
    days = {d: Day(spark, base, d, args.lists) for d in validate + test}
    cache: dict = {}

    def config_of(option: dict):
        return base.replace(index=dataclasses.replace(base.index, **{**TODAY, **option}))

    def run(option: dict, merge: str, dates: list[dt.date]) -> list[dict]:
        out = []
        for d in dates:
            key = (json.dumps({**TODAY, **option}, sort_keys=True), d)
            if key not in cache:
                cache[key] = days[d].index(config_of(option))
            row = measure(days[d], config_of(option), cache[key], merge, k)
            out.append({"day": d.isoformat(), **row})
        return out

    def mean(rows, field):
        vals = [r[field] for r in rows if r[field] is not None]
        return sum(vals) / len(vals) if vals else None

    def label(option, merge):
        o = {**TODAY, **option}
        half = {r: f" h={o['recent_half_life_days']:g}" for r in ("clicks", "exposure")}
        return f"{o['ranking']}{half.get(o['ranking'], '')} top_k={o['top_k']} slots={o['new_article_slots']} {merge}"

    results = []  # (option, merge, validation rows)
    started = time.monotonic()
    for option, merge in product(STAGE_ONE if args.search == "yes" else [TODAY], ("rank_sum", "probability")):
        results.append((option, merge, run(option, merge, validate)))
        print(f"{label(option, merge):<52} validation recall@{k} {mean(results[-1][2], 'recall'):.4f} "
              f"new {mean(results[-1][2], 'new_recall') or 0:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    best_of: dict[str, float] = {}  # each index setting's best validation recall over the merges
    for option, _, rows in results:
        key = json.dumps(option, sort_keys=True)
        best_of[key] = max(best_of.get(key, 0.0), mean(rows, "recall"))
    best = [json.loads(o) for o in sorted(best_of, key=lambda o: -best_of[o])[:3]]
    for option, slots, merge in product(best if args.search == "yes" else [], SLOTS, args.merges.split(",")):
        option = {**option, "new_article_slots": slots}
        if any({**TODAY, **o} == {**TODAY, **option} and m == merge for o, m, _ in results):
            continue
        results.append((option, merge, run(option, merge, validate)))
        print(f"{label(option, merge):<52} validation recall@{k} {mean(results[-1][2], 'recall'):.4f} "
              f"new {mean(results[-1][2], 'new_recall') or 0:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    today = next(v for o, m, v in results if {**TODAY, **o} == TODAY and m == "rank_sum")
    floor = mean(today, "new_recall") or 0.0
    eligible = [r for r in results if (mean(r[2], "new_recall") or 0.0) >= floor]
    winner = max(eligible, key=lambda r: mean(r[2], "recall"))
    print(f"\nchosen on validation: {label(winner[0], winner[1])} (new-article recall floor {floor:.4f})")

    chosen = [("today's default", TODAY, "rank_sum"), ("chosen", winner[0], winner[1])]
    if args.report_option:
        extra = json.loads(args.report_option)
        chosen.append(("reported", {k: v for k, v in extra.items() if k != "merge"}, extra.get("merge", "rank_sum")))
    records = []
    for name, option, merge in chosen:
        for split, dates in (("validation", validate), ("test", test)):
            rows = run(option, merge, dates)
            for r in rows:
                records.append({"option": name, "label": label(option, merge), "split": split, **r})
    latency = {name: merge_latency_ms(days[test[-1]], cache[(json.dumps({**TODAY, **option}, sort_keys=True),
                                                              test[-1])], merge, k)
               for name, option, merge in chosen}

    head = (f"{'option':<16}{'split':<12}{'day':<12}{'recall@k':>10}{'+popular':>10}{'popular@2k':>12}"
            f"{'popular@k':>11}{'new recall':>12}{'pop. new':>10}{'ceiling':>9}")
    print("\n" + head)
    for r in records:
        print(f"{r['option']:<16}{r['split']:<12}{r['day']:<12}{r['recall']:>10.4f}{r['union']:>10.4f}"
              f"{r['popular_2k']:>12.4f}{r['popular']:>11.4f}{r['new_recall'] or 0:>12.4f}"
              f"{r['popular_new'] or 0:>10.4f}{r['ceiling']:>9.4f}")
    for name, ms in latency.items():
        print(f"merge latency, {name}: median {ms:.2f} ms per user (Python, k={k})")
    for split, name in product(("validation", "test"), [n for n, _, _ in chosen[1:]]):
        a = [r for r in records if r["option"] == name and r["split"] == split]
        b = [r for r in records if r["option"] == "today's default" and r["split"] == split]
        print(f"{split}: {name} / today's recall@{k} = {mean(a, 'recall') / mean(b, 'recall'):.2f}x; "
              f"{name} / popular@k = {mean(a, 'recall') / mean(a, 'popular'):.2f}x")

    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": _commit(),
            "machine": f"{platform.node()} {os.cpu_count()} cores", "data": args.label, "lists": args.lists,
            "k": k, "bench": "recall_channel"}
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for option, merge, rows in results:
            for r in rows:
                f.write(json.dumps({**meta, "stage": "search", "label": label(option, merge), "split": "validation",
                                    **{**TODAY, **option}, "merge": merge, **r}) + "\n")
        for r in records:
            f.write(json.dumps({**meta, "stage": "report", **r,
                                "merge_latency_ms": latency[r["option"]]}) + "\n")
    print(f"results appended to {path}")


if __name__ == "__main__":
    main()
