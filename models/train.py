"""Training the multi-task model for day D: fit on a window of triples, validate on D (a
time split, never random), write ``models/<version>/`` and promote it through the gate.
The step ``tagrecall train --date D`` (jobs/train.py) calls ``train_day`` and writes the
run report; nothing here imports Spark or jobs/.

The window is model.window_days days ending at D; the days before D that have triples train,
D validates (early stopping on the validation loss of the click task, or of dwell for a
dwell-only model). Parquet is streamed in record batches.

``models/<version>/``: ``model.keras`` (the network with its vocabularies and normalisation;
loads with safe_mode on), ``metadata.json`` (feature spec, tasks, dwell smearing factor,
training days), ``metrics.json`` (validation metrics of this model and, when there is one,
of the current model on the same day), ``history.json`` and ``history.png`` (per-epoch task
losses and task weights).

The gate promotes the new version only if every loss is finite, the model has a click head
(export ranks by p_click x E[dwell | click]), its validation calibration (mean p_click over
the click rate) lies within model.min_calibration..model.max_calibration, and its
validation CTR AUC is not below that of the model current as of D (models/registry.py:
the latest promotion of a day up to D, a re-run's earlier promotion of D included; never a
later day's model, which trained on D's triples) on the same validation day by more than
model.auc_tolerance. Otherwise nothing is promoted and the report says why. A promotion is
recorded for D; ``current`` moves to it only when no later day has promoted a model.

E[dwell | click] in seconds: the dwell head predicts m = E[log1p(dwell) | click]; with
residuals e on the training clicks, E[dwell] = exp(m) * mean(exp(e)) - 1 (Duan's smearing
estimator), as exp(m) - 1 alone would be the geometric mean, below the mean of a skewed
distribution.

The version name is ``<D>-<loss weighting>-<fingerprint>``, the fingerprint a hash of the
model settings, the feature spec and the training files (names and sizes): retrying a
day's training rewrites the same version (atomically: a new folder renamed into place)
instead of adding one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import data, metrics, registry, tables
from models.scoring import dwell_seconds
from schemas.catalog import table
from schemas.config import Config
from schemas.features import FeatureSpec, feature_spec

log = logging.getLogger(__name__)

SMEARING_ROWS = 200_000


def triple_partitions(config: Config, dates: list[dt.date]) -> dict[str, tables.Partition]:
    return tables.partitions(config, "training_triples", dates)


@dataclass(frozen=True)
class Window:
    """The training window of day D: the partitions of training data found, D validating."""

    day: str
    parts: dict[str, tables.Partition]

    @property
    def train_days(self) -> list[str]:
        return [d for d in self.parts if d != self.day]


def window(config: Config, date: dt.date) -> Window:
    days = [date - dt.timedelta(days=k) for k in range(config.model.window_days - 1, -1, -1)]
    return Window(date.isoformat(), triple_partitions(config, days))


def skip_reason(config: Config, date: dt.date) -> str | None:
    """Why day ``date`` cannot be trained yet (the first days of data), or None."""
    w, cfg = window(config, date), config.model
    if w.day not in w.parts:
        return (f"no training_triples for {w.day} (the validation day) under "
                f"{tables.local_path(table('training_triples').location(config.storage.warehouse))}: "
                f"run `tagrecall triples --date {w.day}`")
    if not w.train_days:
        return (f"no training_triples in the {cfg.window_days - 1} days before {w.day} "
                f"(model.window_days={cfg.window_days}): run `tagrecall triples` for them")
    return None


def model_version(config: Config, spec: FeatureSpec, w: Window) -> str:
    """``<D>-<weighting>-<fingerprint>``: the same settings and data give the same name."""
    files = [(d, name, size) for d, p in w.parts.items() for name, size in p.fingerprint]
    payload = json.dumps({"model": config.to_dict()["model"], "features": spec.to_dict(), "files": files},
                         sort_keys=True, default=str)
    return f"{w.day}-{config.model.loss_weighting}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def tf_dataset(ds, spec: FeatureSpec, batch_size: int, shuffle_seed: int | None = None):
    """A tf.data pipeline over the streamed batches; with ``shuffle_seed``, a new row order
    every epoch (models/data.py), reproducible from the seed."""
    import tensorflow as tf

    signature = (
        {**{c: tf.TensorSpec((None, 1), tf.string) for c in spec.categorical},
         **{c: tf.TensorSpec((None, 1), tf.float32) for c in spec.numeric}},
        {t: tf.TensorSpec((None, 1), tf.float32) for t in data.TARGETS},
    )
    epochs = itertools.count()

    def generate():
        seed = None if shuffle_seed is None else int(np.random.SeedSequence([shuffle_seed, next(epochs)])
                                                     .generate_state(1)[0])
        return data.batches(ds, spec, batch_size, shuffle_seed=seed)

    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)


def predict(model, ds, spec: FeatureSpec, batch_size: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """Predictions and labels over ``ds``: user_id, click, dwell_log (label), dwell_known,
    p_click, dwell_pred."""
    parts: dict[str, list] = {k: [] for k in ("user_id", "click", "dwell_log", "dwell_known", "p_click",
                                              "dwell_pred")}
    seen = 0
    for inputs, targets, users in data.batches(ds, spec, batch_size, with_ids=True):
        out = model.predict_on_batch(inputs)
        parts["user_id"].append(users)
        parts["click"].append(targets["click"].ravel())
        parts["dwell_log"].append(targets["dwell"].ravel())
        parts["dwell_known"].append(targets["dwell_mask"].ravel() > 0)
        parts["p_click"].append(np.asarray(out["click"]).ravel() if "click" in out else None)
        parts["dwell_pred"].append(np.asarray(out["dwell"]).ravel() if "dwell" in out else None)
        seen += len(users)
        if limit is not None and seen >= limit:
            break
    return {k: (np.concatenate(v) if v and v[0] is not None else None) for k, v in parts.items()}


def evaluate(model, ds, spec: FeatureSpec, batch_size: int, smearing: float) -> dict:
    p = predict(model, ds, spec, batch_size)
    dwell_pred = None if p["dwell_pred"] is None else dwell_seconds(p["dwell_pred"], smearing)
    return metrics.all_metrics(p["user_id"], p["click"], p["p_click"], np.expm1(p["dwell_log"]), dwell_pred,
                               dwell_known=p["dwell_known"])


def smearing_factor(model, ds, spec: FeatureSpec, batch_size: int) -> float:
    p = predict(model, ds, spec, batch_size, limit=SMEARING_ROWS)
    if p["dwell_pred"] is None:
        return 1.0
    known = p["dwell_known"]
    if not known.any():
        return 1.0
    return float(np.mean(np.exp(p["dwell_log"][known] - p["dwell_pred"][known])))


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _finite(values) -> bool:
    return all(v is None or (isinstance(v, float | int) and math.isfinite(v)) for v in values)


def gate(new: dict, current: dict | None, tolerance: float, tasks: list[str], history: dict,
         calibration_bounds: tuple[float, float] = (0.0, math.inf)) -> tuple[bool, str]:
    losses = [v for k, vs in history.items() if k.endswith("loss") for v in vs]
    if not _finite(losses) or not _finite([new.get("auc"), new.get("log_loss")]):
        return False, "a loss or metric is not finite"
    if "click" not in tasks:
        return False, "the model has no click head; export ranks by p_click x E[dwell | click]"
    if new.get("auc") is None:
        return False, "validation AUC undefined (the validation day has one class only)"
    low, high = calibration_bounds
    if new.get("calibration") is not None and not low <= new["calibration"] <= high:
        return False, (f"validation calibration {new['calibration']:.3f} (mean p_click over the click rate) is "
                       f"outside model.min_calibration..model.max_calibration = {low:g}..{high:g}")
    if current is None:
        return True, "no current model"
    if current.get("auc") is None:
        return True, f"the current model ({current.get('version')}) could not be compared: {current.get('why')}"
    if new["auc"] < current["auc"] - tolerance:
        return False, (f"validation AUC {new['auc']:.4f} is below the current model's {current['auc']:.4f} "
                       f"by more than model.auc_tolerance={tolerance}")
    return True, f"validation AUC {new['auc']:.4f} vs current {current['auc']:.4f} (tolerance {tolerance})"


def _current_on(config: Config, date: dt.date, val_ds, spec: FeatureSpec, batch_size: int) -> dict | None:
    """The model current as of ``date`` (never one of a later day, which trained on D's
    triples), on D's validation data."""
    version = registry.version_as_of(config.storage.warehouse, date.isoformat())
    if version is None:
        return None
    model, meta = registry.load(config.storage.warehouse, version)
    if meta["features"] != spec.to_dict():
        return {"version": version, "auc": None, "why": "it was trained on other features"}
    if "click" not in meta["tasks"]:
        return {"version": version, "auc": None, "why": "it has no click head"}
    return {"version": version, **evaluate(model, val_ds, spec, batch_size, meta["dwell_smearing"])}


def fit(config: Config, spec: FeatureSpec, stats: data.Statistics, train_ds, val_ds, label: str):
    """(network, trainer, history): the network fitted with early stopping on validation."""
    import keras

    from models.multitask import (
        DwaWeights,
        EpochProgress,
        MultiTaskTrainer,
        TaskWeightLogger,
        build_network,
    )

    cfg = config.model
    keras.utils.set_random_seed(cfg.seed)
    network = build_network(spec, stats, cfg, cfg.tasks)
    trainer = MultiTaskTrainer(network, cfg.tasks, cfg.loss_weighting, cfg.fixed_weights, cfg)
    trainer.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate))
    monitor = "val_click_loss" if "click" in cfg.tasks else "val_dwell_loss"
    callbacks = [TaskWeightLogger(label), EpochProgress(label, data.steps(stats.rows, cfg.batch_size)),
                 keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=cfg.patience,
                                               restore_best_weights=True)]
    if trainer.weighting == "dwa":
        callbacks.insert(1, DwaWeights())
    # The streamed dataset's length is unknown to Keras, which warns at the end of each epoch.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
        fitted = trainer.fit(tf_dataset(train_ds, spec, cfg.batch_size, shuffle_seed=cfg.seed),
                             validation_data=tf_dataset(val_ds, spec, cfg.batch_size),
                             epochs=cfg.epochs, callbacks=callbacks, verbose=0)
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    return network, trainer, history


def write_version(warehouse: str, version: str, network, files: dict[str, str | dict], plot: tuple | None) -> Path:
    """Write the version folder under a temporary name and rename it into place (replacing
    an earlier attempt of the same version): a reader sees the old folder or the new one."""
    root = registry.models_dir(warehouse)
    root.mkdir(parents=True, exist_ok=True)
    folder, tmp = root / version, root / f".{version}.{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        network.save(tmp / registry.MODEL_FILE)
        for name, content in files.items():
            (tmp / name).write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
        if plot is not None:
            plot_history(plot[0], tmp / "history.png", plot[1])
        old = root / f".{version}.replaced.{uuid.uuid4().hex}"
        if folder.exists():
            os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def train_day(config: Config, date: dt.date, version: str | None = None, promote: bool = True) -> dict:
    """Fit, validate, save and (through the gate) promote the model of ``date``; returns the
    result (what the run report holds). Raises ValueError when the day cannot be trained:
    check ``skip_reason`` first."""
    started = time.monotonic()
    reason = skip_reason(config, date)
    if reason:
        raise ValueError(f"train {date}: {reason}")
    cfg, spec, w = config.model, feature_spec(config), window(config, date)
    train_ds, val_ds = tables.dataset([w.parts[d] for d in w.train_days]), tables.dataset([w.parts[w.day]])
    stats = data.statistics(train_ds, spec)
    log.info("train %s: %s rows (%s clicked) from %s; validating on %s", w.day, f"{stats.rows:,}",
             f"{stats.clicks:,}", ", ".join(w.train_days), w.day)
    network, trainer, history = fit(config, spec, stats, train_ds, val_ds, f"train {w.day}")

    smearing = smearing_factor(network, train_ds, spec, cfg.batch_size)
    validation = evaluate(network, val_ds, spec, cfg.batch_size, smearing)
    current = _current_on(config, date, val_ds, spec, cfg.batch_size) if promote else None
    ok, why = gate(validation, current, cfg.auc_tolerance, cfg.tasks, history,
                   (cfg.min_calibration, cfg.max_calibration))
    promoted = bool(ok and promote)

    version = version or model_version(config, spec, w)
    metadata = {"version": version, "date": w.day, "features": spec.to_dict(), "tasks": cfg.tasks,
                "loss_weighting": trainer.weighting, "dwell_smearing": smearing, "train_days": w.train_days,
                "validation_day": w.day, "train_rows": stats.rows, "train_clicks": stats.clicks,
                "learned_log_variances": trainer.log_variances(), "task_weights": trainer.task_weights()}
    gate_note = why if promote else "promotion not requested"
    folder = write_version(config.storage.warehouse, version, network, {
        registry.METADATA_FILE: metadata, "history.json": history,
        "metrics.json": {"validation": validation, "current": current, "promoted": promoted, "gate": gate_note},
    }, plot=(history, f"{version}: {trainer.weighting} weighting"))
    if promoted:
        registry.promote(config.storage.warehouse, version, w.day)
    log.debug("train %s: %s, validation AUC %s, %s (%s)", w.day, version,
             f"{validation.get('auc'):.4f}" if validation.get("auc") is not None else "n/a",
             "promoted" if promoted else "not promoted", why)
    return {"step": "train", "date": w.day, "status": "succeeded", "version": version, "promoted": promoted,
            "gate": gate_note, "validation": validation, "current": current,
            "epochs": len(history.get("loss", [])), "history": history, "task_weights": trainer.task_weights(),
            "train_rows": stats.rows, "train_days": w.train_days,
            "seconds": round(time.monotonic() - started, 3), "model_dir": str(folder)}
