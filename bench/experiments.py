"""Loss-weighting experiments: every weighting of models/weighting.py and models/layers.py
against each other and against single-task models, several seeds each, on a warehouse whose triples are built.

    python bench/experiments.py --warehouse kr/warehouse --config jobs/conf/kuairand.toml \\
        --validate 2022-04-30 --test 2022-05-01 [--seeds 0,1,2] [--out bench/out/experiments-kr.json]

Each variant trains on the window ending at --validate (early stopping on that day), is not
promoted, and is scored on --test:

- CTR AUC, GAUC, log loss and calibration over the test day's rows (models with a click head);
- dwell RMSE and MAE in seconds over clicked rows (models with a dwell head);
- ``tag_gauc``: how well the combined score p_click x E[dwell | click] (p_click alone for
  click-only, E[dwell] alone for dwell-only) ranks each user's candidate tags of the test
  day: per user, the AUC of the tags' mean score against "the user clicked an article
  carrying the tag", weighted by the user's number of tags, over users with both kinds;
- the task weights at the end (learned or set by the weighting), and the median seconds per
  epoch (CPU time of the process) as a ratio to equal weights in the same run.

Prints mean ± standard deviation over seeds per variant, on the validation day (where a
default is chosen) and on the test day (what is reported), and writes every run to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models import metrics, registry, scoring, tables, train
from schemas.config import load_config
from schemas.features import feature_spec

VARIANTS = {
    "uncertainty": {"loss_weighting": "uncertainty"},
    "uncertainty lr x10": {"loss_weighting": "uncertainty", "log_var_lr_multiplier": 10.0},
    "equal": {"loss_weighting": "equal"},
    "fixed": {"loss_weighting": "fixed"},
    "dwa": {"loss_weighting": "dwa"},
    "dtp": {"loss_weighting": "dtp"},
    "gradnorm": {"loss_weighting": "gradnorm"},
    "mgda": {"loss_weighting": "mgda"},
    "pcgrad": {"loss_weighting": "pcgrad"},
    "entire-space dwell": {"loss_weighting": "uncertainty", "dwell_space": "entire"},
    "click only": {"tasks": ["click"]},
    "dwell only": {"tasks": ["dwell"]},
}


def tag_gauc(users, tags, clicks, scores) -> float | None:
    frame = pd.DataFrame({"u": users, "t": tags, "y": clicks, "s": scores})
    per_tag = frame.groupby(["u", "t"]).agg(y=("y", "max"), s=("s", "mean")).reset_index()
    return metrics.gauc(per_tag["u"].to_numpy(), per_tag["y"].to_numpy(), per_tag["s"].to_numpy())


def score_test(config, version: str, test_day: str) -> dict:
    model, meta = registry.load(config.storage.warehouse, version)
    spec = feature_spec(config)
    parts = train.triple_partitions(config, [dt.date.fromisoformat(test_day)])
    ds = tables.dataset([parts[test_day]])
    p = train.predict(model, ds, spec, 4096)
    tags = ds.to_table(columns=["tag"]).column("tag").to_numpy(zero_copy_only=False)
    dwell = None if p["dwell_pred"] is None else scoring.dwell_seconds(p["dwell_pred"], meta["dwell_smearing"])
    out = metrics.all_metrics(p["user_id"], p["click"], p["p_click"], np.expm1(p["dwell_log"]), dwell)
    if p["p_click"] is not None and dwell is not None:
        combined = p["p_click"] * dwell
    else:
        combined = p["p_click"] if p["p_click"] is not None else dwell
    out["tag_gauc"] = tag_gauc(p["user_id"], tags, p["click"], combined)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--config")
    ap.add_argument("--validate", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--architectures", default="shared_bottom",
                    help="comma-separated model.architecture values, each crossed with every variant")
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value overrides")
    ap.add_argument("--out", default="bench/out/experiments.json")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    architectures = [a.strip() for a in args.architectures.split(",")]
    # "<architecture> + <variant>" unless only shared_bottom runs (the names of earlier tables).
    grid = {(v if architectures == ["shared_bottom"] else f"{a} + {v}"): {**VARIANTS[v], "architecture": a}
            for a in architectures for v in names}
    variants = list(grid)
    runs = []
    with tempfile.TemporaryDirectory() as models_home:
        for variant in variants:
            for seed in seeds:
                base = load_config(args.config, overrides={"storage": {"warehouse": args.warehouse}},
                                   assignments=args.set)
                config = base.replace(model=dataclasses.replace(base.model, **grid[variant], seed=seed))
                t0 = time.monotonic()
                version = f"exp-{variant.replace(' ', '-').replace('+', '')}-{seed}-{Path(models_home).name}"
                result = train.train_day(config, dt.date.fromisoformat(args.validate), version=version, promote=False)
                test = score_test(config, version, args.test)
                # The same metrics on the validation day (early stopping's day): the default
                # is chosen on these, the test day's are reported.
                validation = score_test(config, version, args.validate)
                run = {"variant": variant, "seed": seed, "epochs": result["epochs"],
                       "epoch_seconds": statistics.median(result["history"]["epoch_seconds"]),
                       "epoch_cpu_seconds": statistics.median(result["history"]["epoch_cpu_seconds"]),
                       "task_weights": result["task_weights"], "validation": validation, "test": test,
                       "seconds": round(time.monotonic() - t0, 1)}
                runs.append(run)
                print(json.dumps({k: run[k] for k in ("variant", "seed", "epochs", "epoch_cpu_seconds", "task_weights", "test",
                                                      "seconds")},
                                 default=str), flush=True)
                folder = registry.models_dir(config.storage.warehouse) / version
                for f in sorted(folder.glob("*")):
                    f.unlink()
                folder.rmdir()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(runs, indent=2, default=str))

    def cell(variant, day, key):
        vals = [r[day].get(key) for r in runs if r["variant"] == variant and r[day].get(key) is not None]
        if not vals:
            return "-"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {sd:.4f}" if key != "dwell_rmse_sec" else \
            f"{statistics.mean(vals):.1f} ± {sd:.1f}"

    keys = ["auc", "gauc", "log_loss", "calibration", "dwell_rmse_sec", "tag_gauc"]
    # CPU seconds per epoch (median over the run's epochs, then over seeds) against equal
    # weights, measured in this run: CPU time, because wall time on a shared machine moves
    # with whatever else runs.
    per_epoch = {v: statistics.median(r["epoch_cpu_seconds"] for r in runs if r["variant"] == v) for v in variants}
    reference = per_epoch.get("equal") or per_epoch.get("shared_bottom + equal")
    for day, label in (("validation", f"validation day {args.validate} (choose here)"),
                       ("test", f"test day {args.test} (report here)")):
        print(f"\n{label}, seeds {seeds} (mean ± sd)")
        print("| variant | " + " | ".join(keys) + " | weights at the end (click, dwell) | CPU s/epoch vs equal |")
        print("|---" * (len(keys) + 3) + "|")
        for v in variants:
            w = [r["task_weights"] for r in runs if r["variant"] == v]
            wtxt = ", ".join(f"{statistics.mean(x[t] for x in w):.2f}" for t in ("click", "dwell") if t in w[0])
            ratio = f"{per_epoch[v] / reference:.2f}" if reference else f"{per_epoch[v]:.1f} s"
            print(f"| {v} | " + " | ".join(cell(v, day, k) for k in keys) + f" | {wtxt} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
