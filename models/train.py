"""``tagrecall train --date D``: fit the multi-task model on a window of triples, validate on
D (a time split, never random), write ``models/<version>/`` and promote it through the gate.

The window is model.window_days days ending at D; the days before D that have triples train,
D validates (early stopping on the validation loss of the click task, or of dwell for a
dwell-only model). Parquet is streamed in record batches.

``models/<version>/``: ``model.keras`` (the network with its vocabularies and normalisation;
loads with safe_mode on), ``metadata.json`` (feature spec, tasks, dwell smearing factor,
training days), ``metrics.json`` (validation metrics of this model and, when there is one,
of the current model on the same day), ``history.json`` and ``history.png`` (per-epoch task
losses and task weights).

The gate promotes the new version to ``current`` only if every loss is finite, the model
has a click head (export ranks by p_click x E[dwell | click]), and its validation CTR AUC
is not below the current model's on the same validation day by more than
model.auc_tolerance. Otherwise ``current`` stays and the report says why.

E[dwell | click] in seconds: the dwell head predicts m = E[log1p(dwell) | click]; with
residuals e on the training clicks, E[dwell] = exp(m) * mean(exp(e)) - 1 (Duan's smearing
estimator), as exp(m) - 1 alone would be the geometric mean, below the mean of a skewed
distribution.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np

from jobs.common.config import Config
from jobs.common.storage import absolute_uri
from jobs.features import FeatureSpec, feature_spec
from models import data, metrics, registry
from schemas.catalog import run_report_location, table

log = logging.getLogger(__name__)

STEP = "train"
SMEARING_ROWS = 200_000


def _local(uri: str) -> Path:
    uri = absolute_uri(uri)
    return Path(uri.removeprefix("file://").removeprefix("file:"))


def triple_partitions(config: Config, dates: list[dt.date]) -> dict[str, Path]:
    out = {}
    for d in dates:
        p = _local(table("training_triples").partition_location(config.storage.warehouse, d.isoformat()))
        if p.exists():
            out[d.isoformat()] = p
    return out


def tf_dataset(ds, spec: FeatureSpec, batch_size: int, shuffle_seed: int | None = None):
    import tensorflow as tf

    signature = (
        {**{c: tf.TensorSpec((None, 1), tf.string) for c in spec.categorical},
         **{c: tf.TensorSpec((None, 1), tf.float32) for c in spec.numeric}},
        {"click": tf.TensorSpec((None, 1), tf.float32), "dwell": tf.TensorSpec((None, 1), tf.float32)},
    )
    out = tf.data.Dataset.from_generator(lambda: data.batches(ds, spec, batch_size), output_signature=signature)
    if shuffle_seed is not None:
        out = out.shuffle(32, seed=shuffle_seed, reshuffle_each_iteration=True)
    return out.prefetch(2)


def predict(model, ds, spec: FeatureSpec, batch_size: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """Predictions and labels over ``ds``: user_id, click, dwell_log (label), p_click, dwell_pred."""
    parts: dict[str, list] = {"user_id": [], "click": [], "dwell_log": [], "p_click": [], "dwell_pred": []}
    seen = 0
    for inputs, targets, users in data.batches(ds, spec, batch_size, with_ids=True):
        out = model.predict_on_batch(inputs)
        parts["user_id"].append(users)
        parts["click"].append(targets["click"].ravel())
        parts["dwell_log"].append(targets["dwell"].ravel())
        parts["p_click"].append(np.asarray(out["click"]).ravel() if "click" in out else None)
        parts["dwell_pred"].append(np.asarray(out["dwell"]).ravel() if "dwell" in out else None)
        seen += len(users)
        if limit is not None and seen >= limit:
            break
    return {k: (np.concatenate(v) if v and v[0] is not None else None) for k, v in parts.items()}


def dwell_seconds(dwell_log_pred: np.ndarray, smearing: float) -> np.ndarray:
    return np.maximum(np.exp(dwell_log_pred) * smearing - 1.0, 0.0)


def evaluate(model, ds, spec: FeatureSpec, batch_size: int, smearing: float) -> dict:
    p = predict(model, ds, spec, batch_size)
    dwell_pred = None if p["dwell_pred"] is None else dwell_seconds(p["dwell_pred"], smearing)
    return metrics.all_metrics(p["user_id"], p["click"], p["p_click"], np.expm1(p["dwell_log"]), dwell_pred)


def smearing_factor(model, ds, spec: FeatureSpec, batch_size: int) -> float:
    p = predict(model, ds, spec, batch_size, limit=SMEARING_ROWS)
    if p["dwell_pred"] is None:
        return 1.0
    clicked = p["click"] > 0
    if not clicked.any():
        return 1.0
    return float(np.mean(np.exp(p["dwell_log"][clicked] - p["dwell_pred"][clicked])))


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = range(1, len(next(iter(history.values()))) + 1)
    for key in ("click_loss", "val_click_loss", "dwell_loss", "val_dwell_loss"):
        if key in history:
            ax1.plot(epochs, history[key], marker="o", label=key, linestyle="--" if key.startswith("val") else "-")
    ax1.set_xlabel("epoch")
    ax1.set_title("task losses (BCE, masked MSE of log1p dwell)")
    ax1.legend(fontsize=8)
    for key in ("weight_click", "weight_dwell"):
        if key in history:
            ax2.plot(epochs, history[key], marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_title("task weights")
    ax2.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _finite(values) -> bool:
    return all(v is None or (isinstance(v, float | int) and math.isfinite(v)) for v in values)


def gate(new: dict, current: dict | None, tolerance: float, tasks: list[str], history: dict) -> tuple[bool, str]:
    losses = [v for k, vs in history.items() if k.endswith("loss") for v in vs]
    if not _finite(losses) or not _finite([new.get("auc"), new.get("log_loss")]):
        return False, "a loss or metric is not finite"
    if "click" not in tasks:
        return False, "the model has no click head; export ranks by p_click x E[dwell | click]"
    if new.get("auc") is None:
        return False, "validation AUC undefined (the validation day has one class only)"
    if current is None:
        return True, "no current model"
    if current.get("auc") is None:
        return True, f"the current model ({current.get('version')}) could not be compared: {current.get('why')}"
    if new["auc"] < current["auc"] - tolerance:
        return False, (f"validation AUC {new['auc']:.4f} is below the current model's {current['auc']:.4f} "
                       f"by more than model.auc_tolerance={tolerance}")
    return True, f"validation AUC {new['auc']:.4f} vs current {current['auc']:.4f} (tolerance {tolerance})"


def _current_on(config: Config, val_ds, spec: FeatureSpec, batch_size: int) -> dict | None:
    version = registry.current_version(config.storage.warehouse)
    if version is None:
        return None
    model, meta = registry.load(config.storage.warehouse, version)
    if meta["features"] != spec.to_dict():
        return {"version": version, "auc": None, "why": "it was trained on other features"}
    if "click" not in meta["tasks"]:
        return {"version": version, "auc": None, "why": "it has no click head"}
    return {"version": version, **evaluate(model, val_ds, spec, batch_size, meta["dwell_smearing"])}


def _write_report(config: Config, day: str, report: dict) -> None:
    path = _local(run_report_location(config.storage.warehouse, STEP, day))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def run(config: Config, date: dt.date, version: str | None = None, promote: bool = True) -> dict:
    import keras

    from models.multitask import MultiTaskTrainer, TaskWeightLogger, build_network

    started = time.monotonic()
    cfg = config.model
    day = date.isoformat()
    window = [date - dt.timedelta(days=k) for k in range(cfg.window_days - 1, -1, -1)]
    parts = triple_partitions(config, window)
    train_days = [d for d in parts if d != day]
    reason = None
    if day not in parts:
        reason = (f"no training_triples for {day} (the validation day) under "
                  f"{_local(table('training_triples').location(config.storage.warehouse))}: "
                  f"run `tagrecall triples --date {day}`")
    elif not train_days:
        reason = (f"no training_triples in the {cfg.window_days - 1} days before {day} "
                  f"(model.window_days={cfg.window_days}): run `tagrecall triples` for them")
    if reason:
        # The first days of data have nothing to train on: the chain goes on, the report says why.
        _write_report(config, day, {"step": STEP, "date": day, "status": "skipped", "reason": reason,
                                    "config": config.to_dict()})
        log.warning("train %s: skipped, %s", day, reason)
        return {"step": STEP, "date": day, "status": "skipped", "reason": reason}
    spec = feature_spec(config)
    train_ds = data.dataset([parts[d] for d in train_days])
    val_ds = data.dataset([parts[day]])
    stats = data.statistics(train_ds, spec)
    log.info("train %s: %s rows (%s clicked) from %s; validating on %s", day, f"{stats.rows:,}",
             f"{stats.clicks:,}", ", ".join(train_days), day)

    keras.utils.set_random_seed(cfg.seed)
    network = build_network(spec, stats, cfg, cfg.tasks)
    trainer = MultiTaskTrainer(network, cfg.tasks, cfg.loss_weighting, cfg.fixed_weights)
    trainer.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate))
    monitor = "val_click_loss" if "click" in cfg.tasks else "val_dwell_loss"
    callbacks = [TaskWeightLogger(f"train {day}"),
                 keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=cfg.patience,
                                               restore_best_weights=True)]
    # The streamed dataset's length is unknown to Keras, which warns at the end of each epoch.
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    fit = trainer.fit(tf_dataset(train_ds, spec, cfg.batch_size, shuffle_seed=cfg.seed),
                      validation_data=tf_dataset(val_ds, spec, cfg.batch_size),
                      epochs=cfg.epochs, callbacks=callbacks, verbose=0)
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}

    smearing = smearing_factor(network, train_ds, spec, cfg.batch_size)
    validation = evaluate(network, val_ds, spec, cfg.batch_size, smearing)
    current = _current_on(config, val_ds, spec, cfg.batch_size) if promote else None

    version = version or f"{day}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}-{cfg.loss_weighting}"
    folder = registry.models_dir(config.storage.warehouse) / version
    folder.mkdir(parents=True, exist_ok=False)
    network.save(folder / registry.MODEL_FILE)
    metadata = {"version": version, "date": day, "features": spec.to_dict(), "tasks": cfg.tasks,
                "loss_weighting": trainer.weighting, "dwell_smearing": smearing, "train_days": train_days,
                "validation_day": day, "train_rows": stats.rows, "train_clicks": stats.clicks,
                "learned_log_variances": trainer.log_variances(), "task_weights": trainer.task_weights()}
    (folder / registry.METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    (folder / "history.json").write_text(json.dumps(history, indent=2))
    plot_history(history, folder / "history.png", f"{version}: {trainer.weighting} weighting")

    ok, why = gate(validation, current, cfg.auc_tolerance, cfg.tasks, history)
    promoted = bool(ok and promote)
    if promoted:
        registry.promote(config.storage.warehouse, version)
    result = {"step": STEP, "date": day, "status": "succeeded", "version": version, "promoted": promoted,
              "gate": why if promote else "promotion not requested", "validation": validation,
              "current": current, "epochs": len(history.get("loss", [])), "history": history,
              "task_weights": trainer.task_weights(), "train_rows": stats.rows, "train_days": train_days,
              "seconds": round(time.monotonic() - started, 3), "model_dir": str(folder)}
    (folder / "metrics.json").write_text(json.dumps({"validation": validation, "current": current,
                                                     "promoted": promoted, "gate": result["gate"]}, indent=2))
    _write_report(config, day, {**result, "config": config.to_dict()})
    log.info("train %s: %s, validation AUC %s, %s (%s)", day, version,
             f"{validation.get('auc'):.4f}" if validation.get("auc") is not None else "n/a",
             "promoted" if promoted else "not promoted", why)
    return result
