"""The multi-task tag model: a shared bottom and, per task, a Wide&Deep tower.

Inputs are the raw feature columns of schemas/features.py (strings and floats, computed by
jobs/transforms/features.py): the model holds its vocabularies (StringLookup, one
out-of-vocabulary bucket) and its normalisation
(log1p then Normalization with the training data's mean and variance), so a saved model
scores rows as the triples and export tables hold them, with nothing else to ship.

    categorical ids -> embeddings ┐
    numeric -> log1p -> normalise ┴-> shared bottom MLP ─┬─> click tower: deep MLP + wide ─> sigmoid
                                                          └─> dwell tower: deep MLP + wide ─> log1p(seconds)

The wide part of each tower is a linear model over the one-hot categorical features and
hashed crosses (keras.layers.HashedCrossing) of the tag with each user feature, the position
and the hour. The click head outputs its logit too: the loss is computed from it.

``MultiTaskTrainer`` wraps the network for training only: it owns the learned log
variances and the loss of models/layers.py. The saved artefact is the network itself.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from models.data import Statistics
from models.layers import (
    Log1p,
    binary_crossentropy,
    combined_loss,
    masked_mse,
    task_weights,
)
from schemas.config import ModelConfig
from schemas.features import FeatureSpec

log = logging.getLogger(__name__)


def build_network(spec: FeatureSpec, stats: Statistics, cfg: ModelConfig, tasks: list[str]) -> keras.Model:
    inputs = {c: keras.Input(shape=(1,), dtype="string", name=c) for c in spec.categorical}
    inputs |= {c: keras.Input(shape=(1,), dtype="float32", name=c) for c in spec.numeric}
    ids, sizes = {}, {}
    for c in spec.categorical:
        vocab = stats.vocabularies[c]
        ids[c] = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name=f"lookup_{c}")(inputs[c])
        sizes[c] = len(vocab) + 1
    embedded = [keras.layers.Flatten(name=f"flat_{c}")(
        keras.layers.Embedding(sizes[c], cfg.embedding_dim, name=f"embed_{c}")(ids[c])) for c in spec.categorical]
    numeric = keras.layers.Concatenate(name="numeric")([inputs[c] for c in spec.numeric])
    numeric = keras.layers.Normalization(mean=np.array(stats.mean), variance=np.array(stats.variance),
                                         name="normalise")(Log1p(name="log1p")(numeric))
    x = keras.layers.Concatenate(name="bottom_input")([*embedded, numeric])
    for i, units in enumerate(cfg.bottom_units):
        x = keras.layers.Dense(units, activation="relu", name=f"bottom_{i}")(x)

    crossed = [c for c in spec.categorical if c != "tag"]
    cross_ids = {c: keras.layers.HashedCrossing(cfg.cross_buckets, name=f"cross_tag_{c}")((ids["tag"], ids[c]))
                 for c in crossed}
    outputs = {}
    for task in tasks:
        deep = x
        for i, units in enumerate(cfg.tower_units):
            deep = keras.layers.Dense(units, activation="relu", name=f"{task}_deep_{i}")(deep)
        deep = keras.layers.Dense(1, name=f"{task}_deep_out")(deep)
        wide = [keras.layers.Flatten()(keras.layers.Embedding(sizes[c], 1, embeddings_initializer="zeros",
                                                              name=f"{task}_wide_{c}")(ids[c]))
                for c in spec.categorical]
        wide += [keras.layers.Flatten()(keras.layers.Embedding(cfg.cross_buckets, 1, embeddings_initializer="zeros",
                                                               name=f"{task}_wide_tag_x_{c}")(cross_ids[c]))
                 for c in crossed]
        logit = keras.layers.Add(name=f"{task}_wide_plus_deep")([deep, *wide])
        if task == "click":
            # The logit too: the loss is computed from it (models/layers.py), scoring uses the probability.
            outputs["click_logit"] = keras.layers.Identity(name="click_logit")(logit)
            outputs[task] = keras.layers.Activation("sigmoid", name="click")(logit)
        else:
            outputs[task] = keras.layers.Identity(name="dwell")(logit)
    return keras.Model(inputs=inputs, outputs=outputs, name="tag_model")


class MultiTaskTrainer(keras.Model):
    """Trains ``network`` with the configured task weighting; not saved itself."""

    def __init__(self, network: keras.Model, tasks: list[str], weighting: str, fixed: dict[str, float]):
        super().__init__(name="trainer")
        self.network = network
        self.tasks = list(tasks)
        self.weighting = weighting if len(self.tasks) == 2 else "single"
        self.fixed = {"click": fixed.get("click", 1.0), "dwell": fixed.get("dwell", 1.0)}
        self.log_var_click = self.add_weight(name="log_var_click", shape=(), initializer="zeros",
                                             trainable=self.weighting == "uncertainty")
        self.log_var_dwell = self.add_weight(name="log_var_dwell", shape=(), initializer="zeros",
                                             trainable=self.weighting == "uncertainty")
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.click_tracker = keras.metrics.Mean(name="click_loss")
        self.dwell_tracker = keras.metrics.Mean(name="dwell_loss")

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def task_losses(self, y, y_pred):
        bce = binary_crossentropy(y["click"], y_pred["click_logit"]) if "click" in y_pred else 0.0
        mse = masked_mse(y["dwell"], y_pred["dwell"], y["dwell_mask"]) if "dwell" in y_pred else 0.0
        return bce, mse

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        bce, mse = self.task_losses(y, y_pred)
        if self.weighting == "single":
            loss = bce if self.tasks == ["click"] else mse
        else:
            loss = combined_loss(bce, mse, self.weighting, (self.log_var_click, self.log_var_dwell), self.fixed)
        self.total_tracker.update_state(loss)
        if "click" in self.tasks:
            self.click_tracker.update_state(bce)
        if "dwell" in self.tasks:
            self.dwell_tracker.update_state(mse)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.total_tracker, self.click_tracker, self.dwell_tracker]

    def task_weights(self) -> dict[str, float]:
        if self.weighting == "single":
            return {t: 1.0 for t in self.tasks}
        return task_weights(self.weighting, (self.log_var_click, self.log_var_dwell), self.fixed)

    def log_variances(self) -> dict[str, float]:
        return {"click": float(keras.ops.convert_to_numpy(self.log_var_click)),
                "dwell": float(keras.ops.convert_to_numpy(self.log_var_dwell))}


class TaskWeightLogger(keras.callbacks.Callback):
    """Adds each task's learned weight and log variance to the epoch's logs (so they land in
    the history) and logs the epoch's task losses and weights as it ends."""

    def __init__(self, label: str = "train"):
        super().__init__()
        self.label = label

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        trainer = self.model
        for task, w in trainer.task_weights().items():
            logs[f"weight_{task}"] = w
        for task, s in trainer.log_variances().items():
            logs[f"log_var_{task}"] = s
        def part(prefix: str) -> str:
            return " ".join(f"{t} {float(logs[f'{prefix}{t}_loss']):.4f}" for t in trainer.tasks
                            if f"{prefix}{t}_loss" in logs)

        weights = " ".join(f"{t} {w:.3f}" for t, w in trainer.task_weights().items())
        log.info("%s epoch %d: loss %s | validation %s | task weights %s", self.label, epoch + 1, part(""),
                 part("val_") or "n/a", weights)


class EpochProgress(keras.callbacks.Callback):
    """A progress bar over each epoch's batches (tqdm; shown on a terminal only, so logs and
    CI output stay line-based)."""

    def __init__(self, label: str, steps: int):
        super().__init__()
        self.label, self.steps, self.bar = label, steps, None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.steps, desc=f"{self.label} epoch {epoch + 1}", unit="batch", leave=False,
                        disable=None)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
