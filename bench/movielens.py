"""The user-tag model, its losses and the UTPM paper's baselines on MovieLens (ml-latest-small),
the paper's public data set, by the per-user time split of jobs/tools/movielens.py.

    python bench/movielens.py --src ../shared/data/ml-latest-small [--seeds 0,1,2] \\
        [--methods "utpm softmax,utpm joint,..."] [--out bench/out/movielens.json]

Training examples: each user's ratings in [60%, 80%) of their history, the fields from the
first 60%; a seeded 10% of the users is held out of training and stops it early (their
examples are the validation loss) and is where a method is chosen (``validation p@5``:
their lists from the first 60% against their clicks in [60%, 80%)). Test: every user with a
click in the last 20%, the lists from the first 80%, against the tags of those clicks. Every
model has the same fields, label side, epochs, patience and batch size (tag_model settings
of the default config); the towers other than UTPM's use the softmax loss, the default.
Baselines from the same fields: ``global`` (the popular field), ``impressions`` (every rated
movie), ``clicks`` (the liked ones), ``short_weight`` (the likes among the last 10 ratings),
each field's top tags filled up with the global list, and ``mix`` (a tag's share of the
impressions field + 8 x its share of the popular field).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import pyarrow as pa
from tag_model import KS, filled

from jobs.tools import movielens
from models import tag_metrics, utpm_train
from schemas.config import load_config

MODELS = {"utpm softmax": {"loss": "softmax"}, "utpm joint": {"loss": "joint"}, "utpm split": {"loss": "split"},
          **{t: {"tower": t, "loss": "softmax"} for t in ("youtube_dnn", "fm", "dcn", "autoint")}}
BASELINES = ("global", *movielens.FIELDS, "mix")
MAIN = ("validation p@5", "p@1", "p@5", "r@5", "ndcg@5", "ndcg@10", "tag_coverage@5")


def baselines(users: pa.Table) -> dict[str, dict[str, list[str]]]:
    out = {m: {} for m in BASELINES}
    for r in users.to_pylist():
        pop = list(r["popular_tags"])
        share = {t: w for t, w in zip(r["popular_tags"], r["popular_weights"], strict=True)}
        out["global"][r["user_id"]] = pop
        for f in movielens.FIELDS:
            out[f][r["user_id"]] = filled(list(r[f"{f}_tags"]), pop)
        total = sum(r["impressions_weights"]) or 1.0
        shown = {t: w / total for t, w in zip(r["impressions_tags"], r["impressions_weights"], strict=True)}
        mix = {t: shown.get(t, 0.0) + 8 * share.get(t, 0.0) for t in set(shown) | set(share)}
        out["mix"][r["user_id"]] = filled(sorted(mix, key=lambda t: (-mix[t], t)), pop)
    return out


def model_lists(network, meta, users: pa.Table, pop: list[str]) -> dict[str, list[str]]:
    scored = utpm_train.score_users(network, meta, users.combine_chunks().to_batches()[0], 20)
    lists: dict[str, list[str]] = {}
    for u, t in zip(scored.column("user_id").to_pylist(), scored.column("tag").to_pylist(), strict=True):
        lists.setdefault(u, []).append(t)
    return {u: filled(v, pop) for u, v in lists.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default="../shared/data/ml-latest-small")
    ap.add_argument("--config")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(MODELS), help=f"models, of: {', '.join(MODELS)}")
    ap.add_argument("--validation-share", type=float, default=0.1)
    ap.add_argument("--out")
    args = ap.parse_args()
    base = load_config(args.config)
    config = base.replace(features=dataclasses.replace(base.features, user_features=[]),
                          tag_model=dataclasses.replace(base.tag_model, fields=list(movielens.FIELDS),
                                                        popular_field=True))
    cfg = config.tag_model
    ratings, movies, tags = movielens.read(args.src)
    tags_of = movielens.movie_tags(movies, tags, article_tags=cfg.article_tags)
    rated = movielens.ordered(ratings)
    every = movielens.examples(rated, tags_of, 0.6, 0.8, cfg.field_length)
    held = movielens.validation_users(sorted(set(rated.userId)), args.validation_share, 0)
    is_val = pa.array([u in held for u in every.column("user_id").to_pylist()])
    train, val = every.filter(pa.compute.invert(is_val)), every.filter(is_val)
    # The validation users' lists from their first 60%, judged on their clicks in [60%, 80%).
    val_users, val_clicks = movielens.split(rated[rated.userId.isin(held)], tags_of, 0.6, cfg.field_length, hi=0.8)
    test_users, test_clicks = movielens.split(rated, tags_of, 0.8, cfg.field_length)
    vocab = len({t for ts in tags_of.values() for t, _ in ts})
    print(f"MovieLens: {len(ratings):,} ratings of {rated.userId.nunique()} users, {vocab} tags; "
          f"{train.num_rows:,} training and {val.num_rows:,} validation examples ({len(held)} users); "
          f"{test_users.num_rows} test users, {len(test_clicks):,} test clicks", flush=True)

    def judged(method, lists_val, lists_test, seed=None, **extra):
        got = tag_metrics.tag_metrics(lists_test, test_clicks, KS, vocab)
        got["validation p@5"] = tag_metrics.tag_metrics(lists_val, val_clicks, (5,))["p@5"]
        return {"method": method, "seed": seed, **extra, **got}

    results = []
    base_val, base_test = baselines(val_users), baselines(test_users)
    for m in BASELINES:
        results.append(judged(m, base_val[m], base_test[m]))
    pop = test_users.column("popular_tags")[0].as_py() if test_users.num_rows else []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method not in MODELS:
            raise SystemExit(f"unknown method {method!r}; known: {', '.join(MODELS)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            run_cfg = config.replace(tag_model=dataclasses.replace(cfg, seed=seed, **MODELS[method]))
            started = time.monotonic()
            network, meta, history = utpm_train.fit(run_cfg, train, val, f"{method} seed {seed}")
            seconds = time.monotonic() - started
            results.append(judged(method, model_lists(network, meta, val_users, pop),
                                  model_lists(network, meta, test_users, pop), seed,
                                  epochs=len(history["loss"]), train_seconds=seconds,
                                  examples_per_sec=train.num_rows * len(history["loss"]) / seconds))
            print(f"  {method} seed {seed}: validation p@5 {results[-1]['validation p@5']:.4f}, "
                  f"test p@5 {results[-1]['p@5']:.4f} ({len(history['loss'])} epochs, {seconds:.0f} s)", flush=True)
    print(summary(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def summary(results: list[dict]) -> str:
    lines = [f"{'method':<14}" + "".join(f"{m:>20}" for m in MAIN)]
    for m in dict.fromkeys(r["method"] for r in results):
        cells = []
        for key in MAIN:
            vals = [r[key] for r in results if r["method"] == m]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.4f} ± {sd:.4f}")
        lines.append(f"{m:<14}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
