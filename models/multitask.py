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
variances, the loss of models/layers.py and the weightings of models/weighting.py. The
saved artefact is the network itself, whatever the weighting.

Weightings (``model.loss_weighting``):
- equal, fixed, uncertainty: a formula of the two losses (models/layers.py);
- dwa: weights from the last two epochs' mean losses, set at each epoch's end;
- dtp: weights from a running KPI per task (exp(-BCE), exp(-MSE)), updated every batch;
- gradnorm, mgda, pcgrad: from the task gradients, in a train_step of their own (two
  backward passes, TensorFlow's GradientTape). gradnorm on the kernel of the last shared
  layer, mgda with respect to the shared layer's output (MGDA-UB), pcgrad on every shared
  variable (embeddings, normalisation, bottom MLP); tower variables get their own task's
  gradient.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from models import weighting as mtl
from models.data import Statistics
from models.layers import (
    ExpertMixture,
    Log1p,
    binary_crossentropy,
    build_optimizer,
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
    task_input = shared_part(x, cfg, tasks)

    crossed = [c for c in spec.categorical if c != "tag"]
    cross_ids = {c: keras.layers.HashedCrossing(cfg.cross_buckets, name=f"cross_tag_{c}")((ids["tag"], ids[c]))
                 for c in crossed}
    outputs = {}
    for task in tasks:
        deep = task_input[task]
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


GRADIENT_WEIGHTINGS = ("gradnorm", "mgda", "pcgrad")
# Weightings whose two task weights live in ``task_w`` (set by the method, not trained).
STATE_WEIGHTINGS = ("dwa", "dtp", "gradnorm", "mgda", "pcgrad")


def _shared_layer_name(network: keras.Model) -> str:
    """The representation MGDA-UB takes the task gradients at: the bottom MLP's output, or
    the embedded features under mmoe and ple (shared by every expert)."""
    bottoms = sorted((layer.name for layer in network.layers if layer.name.startswith("bottom_")
                      and layer.name != "bottom_input"), key=lambda n: int(n.rsplit("_", 1)[1]))
    return bottoms[-1] if bottoms else "bottom_input"


def _mlp(x, units: list[int], name: str):
    for i, n in enumerate(units):
        x = keras.layers.Dense(n, activation="relu", name=f"{name}_{i}")(x)
    return x


def shared_part(x, cfg: ModelConfig, tasks: list[str]) -> dict:
    """Each task's input to its tower, from the embedded features ``x``:

    - shared_bottom: one MLP (``bottom_units``) for every task;
    - mmoe (Ma et al. 2018): ``experts`` MLPs (``expert_units``) shared by the tasks, mixed
      per task by a softmax gate on x;
    - ple (Tang et al. 2020): ``ple_levels`` CGC layers, each with ``task_experts`` experts
      per task and ``experts`` shared ones; a task's gate mixes its own and the shared
      experts, a shared gate (below the last level) mixes them all for the next level.

    Layers named after a task (``click_*``, ``dwell_*``) belong to it; every other layer is
    shared (what pcgrad projects)."""
    if cfg.architecture == "shared_bottom":
        out = _mlp(x, cfg.bottom_units, "bottom")
        return {t: out for t in tasks}
    if cfg.architecture == "mmoe":
        experts = [_mlp(x, cfg.expert_units, f"expert_{e}") for e in range(cfg.experts)]
        return {t: ExpertMixture(name=f"{t}_mixture")(
            [keras.layers.Dense(cfg.experts, activation="softmax", name=f"{t}_gate")(x), *experts]) for t in tasks}
    if cfg.architecture == "ple":
        task_in, shared_in = {t: x for t in tasks}, x
        for level in range(cfg.ple_levels):
            own = {t: [_mlp(task_in[t], cfg.expert_units, f"{t}_expert_{level}_{e}") for e in range(cfg.task_experts)]
                   for t in tasks}
            shared = [_mlp(shared_in, cfg.expert_units, f"shared_expert_{level}_{e}") for e in range(cfg.experts)]
            new_in = {}
            for t in tasks:
                pool = own[t] + shared
                gate = keras.layers.Dense(len(pool), activation="softmax", name=f"{t}_gate_{level}")(task_in[t])
                new_in[t] = ExpertMixture(name=f"{t}_mixture_{level}")([gate, *pool])
            if level < cfg.ple_levels - 1:
                pool = [e for t in tasks for e in own[t]] + shared
                gate = keras.layers.Dense(len(pool), activation="softmax", name=f"shared_gate_{level}")(shared_in)
                shared_in = ExpertMixture(name=f"shared_mixture_{level}")([gate, *pool])
            task_in = new_in
        return task_in
    raise ValueError(f"unknown model.architecture {cfg.architecture!r}")


def shared_kernels(network: keras.Model) -> list:
    """The kernels GradNorm measures the task gradients on: the last layer every task uses
    (the bottom MLP's last; every expert's last under mmoe; the last level's shared experts'
    last under ple)."""
    import re

    dense = [layer.name for layer in network.layers if isinstance(layer, keras.layers.Dense)]
    found: dict[tuple, tuple] = {}  # (group) -> (position, name) of the deepest layer
    for name in dense:
        for pattern, key in ((r"bottom_(\d+)$", lambda m: ((), (int(m[1]),))),
                             (r"expert_(\d+)_(\d+)$", lambda m: ((int(m[1]),), (int(m[2]),))),
                             (r"shared_expert_(\d+)_(\d+)_(\d+)$", lambda m: ((int(m[2]),), (int(m[1]), int(m[3]))))):
            m = re.fullmatch(pattern, name)
            if m:
                group, position = key(m)
                if group not in found or position > found[group][0]:
                    found[group] = (position, name)
    if not found:
        raise ValueError("gradnorm needs a shared layer: give model.bottom_units at least one size")
    deepest = max(position[:-1] for position, _ in found.values())  # ple: the last level only
    return [network.get_layer(name).kernel for position, name in found.values() if position[:-1] == deepest]


class MultiTaskTrainer(keras.Model):
    """Trains ``network`` with the configured task weighting; not saved itself."""

    def __init__(self, network: keras.Model, tasks: list[str], weighting: str, fixed: dict[str, float],
                 cfg: ModelConfig | None = None):
        super().__init__(name="trainer")
        self.network = network
        self.tasks = list(tasks)
        self.weighting = weighting if len(self.tasks) == 2 else "single"
        self.cfg = cfg or ModelConfig()
        self.fixed = {"click": fixed.get("click", 1.0), "dwell": fixed.get("dwell", 1.0)}
        # s = log_var_lr_multiplier x a trained raw value: with Adam, the log variances move
        # that many times faster than the network's weights (a learning rate of their own).
        self.log_var_scale = float(self.cfg.log_var_lr_multiplier)
        self.raw_log_var_click = self.add_weight(name="log_var_click", shape=(), initializer="zeros",
                                                 trainable=self.weighting == "uncertainty")
        self.raw_log_var_dwell = self.add_weight(name="log_var_dwell", shape=(), initializer="zeros",
                                                 trainable=self.weighting == "uncertainty")
        self.task_w = self.add_weight(name="task_weights", shape=(2,), initializer="ones", trainable=False)
        self.kpi = self.add_weight(name="task_kpis", shape=(2,), initializer=keras.initializers.Constant(0.5),
                                   trainable=False)
        self.initial_losses = self.add_weight(name="initial_losses", shape=(2,), initializer="zeros",
                                              trainable=False)
        if self.weighting in GRADIENT_WEIGHTINGS:
            # The network's outputs and its shared representation, through the same layers.
            self.shared_name = _shared_layer_name(network)
            self.with_shared = keras.Model(network.input, {"shared": network.get_layer(self.shared_name).output,
                                                           **network.output})
            self.weight_optimizer = keras.optimizers.Adam(self.cfg.gradnorm_learning_rate)
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.click_tracker = keras.metrics.Mean(name="click_loss")
        self.dwell_tracker = keras.metrics.Mean(name="dwell_loss")

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def compile(self, *args, **kwargs):
        """Keras's compile, then the optimizers' slots (``build_optimizer``): the compiled
        optimizer's for the trainable variables, gradnorm's weight optimizer's for the task
        weights."""
        super().compile(*args, **kwargs)
        build_optimizer(self.optimizer, self.trainable_variables)
        if self.weighting == "gradnorm":
            build_optimizer(self.weight_optimizer, [self.task_w])

    @property
    def log_var_click(self):
        return self.log_var_scale * self.raw_log_var_click

    @property
    def log_var_dwell(self):
        return self.log_var_scale * self.raw_log_var_dwell

    def task_losses(self, y, y_pred):
        bce = binary_crossentropy(y["click"], y_pred["click_logit"]) if "click" in y_pred else 0.0
        if "dwell" not in y_pred:
            return bce, 0.0
        if self.cfg.dwell_space == "entire" and "click" in y_pred:
            # ESMM's entire space: every impression with a known outcome, target click x
            # log1p dwell, prediction p_click x E[log1p dwell | click]; the dwell head is still
            # E[log1p dwell | click], learnt without selecting the clicked rows.
            clicked = y["click"]
            target = keras.ops.where(clicked > 0, y["dwell"], 0.0)
            mask = (1.0 - clicked) + y["dwell_mask"]
            return bce, masked_mse(target, keras.ops.sigmoid(y_pred["click_logit"]) * y_pred["dwell"], mask)
        return bce, masked_mse(y["dwell"], y_pred["dwell"], y["dwell_mask"])

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        bce, mse = self.task_losses(y, y_pred)
        if self.weighting == "single":
            loss = bce if self.tasks == ["click"] else mse
        elif self.weighting in STATE_WEIGHTINGS:
            if self.weighting == "dtp" and training:
                a = self.cfg.dtp_smoothing
                now = keras.ops.exp(-keras.ops.stop_gradient(keras.ops.stack([bce, mse])))
                self.kpi.assign(a * self.kpi + (1.0 - a) * now)
                self.task_w.assign(mtl.dtp_weights(self.kpi, self.cfg.dtp_gamma))
            loss = self.task_w[0] * bce + self.task_w[1] * mse
        else:
            loss = combined_loss(bce, mse, self.weighting, (self.log_var_click, self.log_var_dwell), self.fixed)
        self.track(loss, bce, mse)
        return loss

    def track(self, loss, bce, mse) -> None:
        self.total_tracker.update_state(loss)
        if "click" in self.tasks:
            self.click_tracker.update_state(bce)
        if "dwell" in self.tasks:
            self.dwell_tracker.update_state(mse)

    def train_step(self, data):
        """The gradient-based weightings (gradnorm, mgda, pcgrad); the others use Keras's step."""
        if self.weighting not in GRADIENT_WEIGHTINGS:
            return super().train_step(data)
        import tensorflow as tf

        x, y = data[0], data[1]
        variables = self.network.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            out = self.with_shared(x, training=True)
            bce, mse = self.task_losses(y, out)
        def dense(grads):  # embeddings' gradients come as IndexedSlices; a tower's is None for the other task
            return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                    for g, v in zip(grads, variables, strict=True)]

        g_click, g_dwell = dense(tape.gradient(bce, variables)), dense(tape.gradient(mse, variables))
        shared = [not (v.path.startswith("click_") or v.path.startswith("dwell_")) for v in variables]
        if self.weighting == "mgda":
            z_click, z_dwell = tape.gradient(bce, out["shared"]), tape.gradient(mse, out["shared"])
            self.task_w.assign(mtl.min_norm_weights(tf.reshape(z_click, [-1]), tf.reshape(z_dwell, [-1])))
        if self.weighting == "gradnorm":
            kernels = shared_kernels(self.network)
            norms = tf.stack([tf.linalg.global_norm(tape.gradient(loss, kernels)) for loss in (bce, mse)])
            losses = tf.stack([bce, mse])
            # L(0): the first batch's losses.
            self.initial_losses.assign(tf.where(self.initial_losses > 0, self.initial_losses, losses))
        del tape
        w = self.task_w
        if self.weighting == "pcgrad":
            idx = [i for i, s in enumerate(shared) if s]
            flat = [tf.concat([tf.reshape(g[i], [-1]) for i in idx], 0) for g in (g_click, g_dwell)]
            combined = mtl.pcgrad(flat)
            grads = [gc + gd for gc, gd in zip(g_click, g_dwell, strict=True)]
            offset = 0
            for i in idx:
                size = int(np.prod(variables[i].shape))
                grads[i] = tf.reshape(combined[offset:offset + size], variables[i].shape)
                offset += size
        else:
            grads = [w[0] * gc + w[1] * gd for gc, gd in zip(g_click, g_dwell, strict=True)]
        self.optimizer.apply(grads, variables)
        if self.weighting == "gradnorm":
            self.weight_optimizer.apply([mtl.gradnorm_gradient(w, norms, losses, self.initial_losses,
                                                               self.cfg.gradnorm_alpha)], [self.task_w])
            self.task_w.assign(mtl.renormalise(self.task_w))
        self.track(w[0] * bce + w[1] * mse, bce, mse)
        return {m.name: m.result() for m in self.metrics}

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.total_tracker, self.click_tracker, self.dwell_tracker]

    def task_weights(self) -> dict[str, float]:
        if self.weighting == "single":
            return {t: 1.0 for t in self.tasks}
        if self.weighting in STATE_WEIGHTINGS:
            w = keras.ops.convert_to_numpy(self.task_w)
            return {"click": float(w[0]), "dwell": float(w[1])}
        return task_weights(self.weighting, (self.log_var_click, self.log_var_dwell), self.fixed)

    def set_epoch_losses(self, history: list[tuple[float, float]]) -> None:
        """DWA: the weights for the next epoch from the mean task losses of those so far."""
        if self.weighting != "dwa":
            return
        w = mtl.dwa_weights(history[-1], history[-2], self.cfg.dwa_temperature) if len(history) >= 2 else None
        self.task_w.assign(np.ones(2, "float32") if w is None else keras.ops.convert_to_numpy(w))

    def log_variances(self) -> dict[str, float]:
        return {"click": float(keras.ops.convert_to_numpy(self.log_var_click)),
                "dwell": float(keras.ops.convert_to_numpy(self.log_var_dwell))}


class TaskWeightLogger(keras.callbacks.Callback):
    """Adds each task's learned weight and log variance to the epoch's logs (so they land in
    the history) and logs the epoch's task losses and weights as it ends."""

    def __init__(self, label: str = "train"):
        super().__init__()
        self.label = label
        self.started = self.cpu_started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        import time

        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        import time

        logs["epoch_seconds"] = time.perf_counter() - self.started
        # CPU seconds of the whole process (every thread): steadier than wall time on a shared machine.
        logs["epoch_cpu_seconds"] = time.process_time() - self.cpu_started
        trainer = self.model
        logs_weights = trainer.task_weights()
        for task, w in logs_weights.items():
            logs[f"weight_{task}"] = w
        for task, s in trainer.log_variances().items():
            logs[f"log_var_{task}"] = s
        def part(prefix: str) -> str:
            return " ".join(f"{t} {float(logs[f'{prefix}{t}_loss']):.4f}" for t in trainer.tasks
                            if f"{prefix}{t}_loss" in logs)

        weights = " ".join(f"{t} {w:.3f}" for t, w in logs_weights.items())
        log.info("%s epoch %d: loss %s | validation %s | task weights %s", self.label, epoch + 1, part(""),
                 part("val_") or "n/a", weights)


class DwaWeights(keras.callbacks.Callback):
    """DWA: after each epoch, the next epoch's task weights from the mean task losses of the
    epochs so far (place it after TaskWeightLogger, which logs the weights the epoch used)."""

    def __init__(self):
        super().__init__()
        self.losses: list[tuple[float, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        if logs and "click_loss" in logs and "dwell_loss" in logs:
            self.losses.append((float(logs["click_loss"]), float(logs["dwell_loss"])))
            self.model.set_epoch_losses(self.losses)


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
