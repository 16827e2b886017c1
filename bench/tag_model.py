"""The user-tag model against the profile and popularity baselines on tag prediction, several
seeds and settings, on a warehouse whose tag_examples are built (`tagrecall run` up to
triples). No Spark: everything comes from the tag_examples partitions.

    python bench/tag_model.py --warehouse kr/wh --config jobs/conf/kuairand.toml \\
        --days 2022-04-27,2022-04-28 [--seeds 0,1,2] [--variant name:section.key=value,...]... \\
        [--out bench/out/tag-model.json]

For each day D of --days and each variant and seed: the tag model is trained on the examples
of the window ending at D (D validating, as the tag_model step does) and ranks the tags of
every user with examples on D+1, from the fields those examples carry (the user's fields
as of D: the definition the step scores with). Lists are compared with the tags of the
articles each user clicks on D+1 (models/tag_metrics.py): P@K, R@K, NDCG@K, click coverage
and tag coverage. Baselines from the same fields: ``global`` (the popular field: D's most
clicked tags), ``long``, ``short``, ``blend`` (0.5 x long share + 0.5 x short share) and
``mix`` (share of the user's decayed impressions + 8 x the tag's share of the popular
field's clicks), each filled up with the global list.

Prints mean ± sd over seeds and days per method, and the training examples/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import numpy as np

from models import tag_metrics, utpm_train
from schemas.config import load_config

KS = (1, 3, 5, 10)
MAIN = ("p@5", "r@5", "ndcg@5", "click_coverage@5", "p@1", "ndcg@10", "tag_coverage@5")


def filled(mine: list[str], fallback: list[str], n: int = 20) -> list[str]:
    return (mine + [t for t in fallback if t not in mine])[:n]


def baselines(rows: list[dict]) -> dict[str, dict[str, list[str]]]:
    """user -> ranked tags per baseline, from the example rows of the users (one per user)."""
    out = {m: {} for m in ("global", "long", "short", "blend", "mix")}
    for r in rows:
        pop = list(r["popular_tags"])
        share = {t: w for t, w in zip(r["popular_tags"], r["popular_weights"], strict=True)}
        out["global"][r["user_id"]] = pop

        def shares(field, r=r):
            tags, w = r[f"{field}_tags"], r[f"{field}_weights"]
            total = sum(w) or 1.0
            return {t: x / total for t, x in zip(tags, w, strict=True)}

        long, short, shown = shares("long_weight"), shares("short_weight"), shares("impressions")
        for name, scores in (("long", long), ("short", short),
                             ("blend", {t: 0.5 * long.get(t, 0) + 0.5 * short.get(t, 0) for t in set(long) | set(short)}),
                             ("mix", {t: shown.get(t, 0) + 8 * share.get(t, 0) for t in set(shown) | set(share)})):
            ranked = sorted((t for t, s in scores.items() if s > 0), key=lambda t: (-scores[t], t))
            out[name][r["user_id"]] = filled(ranked, pop)
    return out


def fused(a: list[str], b: list[str], k: float, n: int = 20) -> list[str]:
    """Reciprocal-rank fusion of two ranked lists: 1 / (k + rank in a) + 1 / (k + rank in b)."""
    score: dict[str, float] = {}
    for ranked in (a, b):
        for i, t in enumerate(ranked, 1):
            score[t] = score.get(t, 0.0) + 1.0 / (k + i)
    return sorted(score, key=lambda t: (-score[t], t))[:n]


def run(config, day: dt.date, seeds: list[int], variants: dict[str, dict], fuse_with: str | None = None,
        fusion_k: float = 60.0) -> list[dict]:
    nxt = (day + dt.timedelta(days=1)).isoformat()
    nxt_part = utpm_train.window(config, day + dt.timedelta(days=1)).parts.get(nxt)
    if nxt_part is None:
        raise SystemExit(f"no tag_examples for {nxt}: the lists of {day} are judged on the clicks of {nxt}")
    test = utpm_train.read([nxt_part])
    clicks = [(u, [t["tag"] for t in tags]) for u, tags, c in zip(
        test.column("user_id").to_pylist(), test.column("article_tags").to_pylist(), test.column("click").to_pylist(),
        strict=True) if c]
    _, first = np.unique(np.asarray(test.column("user_id").to_numpy(zero_copy_only=False), dtype=object),
                         return_index=True)
    users = test.take(np.sort(first))
    rows = users.to_pylist()
    fields = [c for c in test.column_names if c.endswith("_tags") and c != "article_tags"]
    vocab = len({t for _, tags in clicks for t in tags} | {t for r in rows for f in fields for t in r[f]})
    results = []
    base = baselines(rows)
    for name, lists in base.items():
        results.append({"day": day.isoformat(), "method": name, "seed": None,
                        **tag_metrics.tag_metrics(lists, clicks, KS, vocab)})
    w = utpm_train.window(config, day)
    train = utpm_train.read([w.parts[d] for d in w.train_days])
    val = utpm_train.read([w.parts[w.day]])
    for variant, overrides in variants.items():
        for seed in seeds:
            cfg = config.replace(tag_model=dataclasses.replace(config.tag_model, seed=seed, **overrides))
            started = time.monotonic()
            network, meta, history = utpm_train.fit(cfg, train, val, f"{variant} seed {seed}")
            seconds = time.monotonic() - started
            scored = utpm_train.score_users(network, meta, users.to_batches(max_chunksize=users.num_rows)[0], 20)
            lists: dict[str, list[str]] = {}
            for u, t in zip(scored.column("user_id").to_pylist(), scored.column("tag").to_pylist(), strict=True):
                lists.setdefault(u, []).append(t)
            pop = rows[0]["popular_tags"] if rows else []
            lists = {u: filled(v, pop) for u, v in lists.items()}
            results.append({"day": day.isoformat(), "method": variant, "seed": seed, "epochs": len(history["loss"]),
                            "train_seconds": seconds, "examples_per_sec": train.num_rows * len(history["loss"]) / seconds,
                            **tag_metrics.tag_metrics(lists, clicks, KS, vocab)})
            if fuse_with:
                other = base[fuse_with]
                fusedl = {u: fused(lists.get(u, pop), other.get(u, pop), fusion_k) for u in set(lists) | set(other)}
                results.append({"day": day.isoformat(), "method": f"{variant} + {fuse_with} (rank fusion)",
                                "seed": seed, **tag_metrics.tag_metrics(fusedl, clicks, KS, vocab)})
            print(f"  {day} {variant} seed {seed}: p@5 {results[-1]['p@5']:.4f} click coverage@5 "
                  f"{results[-1]['click_coverage@5']:.4f} ({seconds:.0f} s)", flush=True)
    return results


def summary(results: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = [f"{'method':<22}" + "".join(f"{m:>20}" for m in MAIN)]
    for m in methods:
        cells = []
        for key in MAIN:
            vals = [r[key] for r in results if r["method"] == m and key in r]
            mean = statistics.fmean(vals) if vals else float("nan")
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        lines.append(f"{m:<22}" + "".join(f"{c:>20}" for c in cells))
    speed = [r["examples_per_sec"] for r in results if "examples_per_sec" in r]
    if speed:
        lines.append(f"training: median {statistics.median(speed):,.0f} examples/s (epochs x rows / seconds)")
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, sets = text.partition(":")
    overrides = {}
    for item in filter(None, sets.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:   # a bare word: a string setting (loss=softmax, tower=fm)
            overrides[key.strip()] = value.strip()
    return name, overrides


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--config")
    ap.add_argument("--days", required=True, help="comma-separated days D (lists of D against the clicks of D+1)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variant", action="append", default=[],
                    help="name:key=value,... over tag_model settings (default: one variant per loss)")
    ap.add_argument("--fuse-with", choices=("global", "long", "short", "blend", "mix"),
                    help="also rank each model's list fused with this baseline's (reciprocal ranks)")
    ap.add_argument("--out")
    args = ap.parse_args()
    config = load_config(args.config, overrides={"storage": {"warehouse": args.warehouse}})
    variants = dict(parse_variant(v) for v in args.variant) or {
        f"utpm {loss}": {"loss": loss} for loss in ("joint", "split", "softmax")}
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for day in args.days.split(","):
        results += run(config, dt.date.fromisoformat(day), seeds, variants, args.fuse_with,
                       config.export.fusion_k)
    print(summary(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
