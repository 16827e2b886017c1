"""Building blocks of the multi-task tag model: the task losses and their weighting.

The loss (DESIGN.md, Kendall, Gal and Cipolla 2018), with s_i = log sigma_i^2 learned:

    uncertainty:  L = exp(-s_click) * BCE + 0.5 * s_click + 0.5 * exp(-s_dwell) * MSE + 0.5 * s_dwell
    equal:        L = BCE + MSE
    fixed:        L = w_click * BCE + w_dwell * MSE

BCE is over every sample, computed from the click logit (exact for any logit; clipping a
probability would cap the loss of a confident mistake at -log(1e-7) = 16.1). MSE (of log1p
dwell seconds) is over clicked samples with a known dwell only (models/data.py's
``dwell_mask``): a masked mean, so the dwell head learns E[log1p dwell | click] and the
unclicked rows, whose dwell is unknown rather than zero, do not pull it towards zero.

``build_optimizer`` is shared by both trainers (the multi-task and the user-tag model's).
"""

from __future__ import annotations

import keras
from keras import ops


def binary_crossentropy(y_true, logit):
    """Mean binary cross-entropy of labels ``y_true`` against the click ``logit``."""
    return ops.mean(ops.binary_crossentropy(y_true, logit, from_logits=True))


def masked_mse(y_true, y_pred, mask):
    """Mean squared error over the rows where ``mask`` is 1 (0 when there are none)."""
    se = ops.square(y_true - y_pred) * mask
    return ops.sum(se) / ops.maximum(ops.sum(mask), 1.0)


def combined_loss(bce, mse, weighting: str, log_vars=None, fixed=None):
    """The weighted sum of the two task losses; ``log_vars`` = (s_click, s_dwell)."""
    if weighting == "uncertainty":
        s_click, s_dwell = log_vars
        return ops.exp(-s_click) * bce + 0.5 * s_click + 0.5 * ops.exp(-s_dwell) * mse + 0.5 * s_dwell
    if weighting == "equal":
        return bce + mse
    if weighting == "fixed":
        return fixed["click"] * bce + fixed["dwell"] * mse
    raise ValueError(f"unknown loss weighting {weighting!r}")


def task_weights(weighting: str, log_vars=None, fixed=None) -> dict[str, float]:
    """The factor in front of each task's loss (what uncertainty weighting learns)."""
    if weighting == "uncertainty":
        s_click, s_dwell = (float(ops.convert_to_numpy(v)) for v in log_vars)
        import math

        return {"click": math.exp(-s_click), "dwell": 0.5 * math.exp(-s_dwell)}
    if weighting == "equal":
        return {"click": 1.0, "dwell": 1.0}
    return dict(fixed)


@keras.saving.register_keras_serializable(package="tagrecall")
class Log1p(keras.layers.Layer):
    """log1p of max(x, 0): counts and weights are heavy-tailed and non-negative."""

    def call(self, x):
        return ops.log1p(ops.maximum(x, 0.0))


@keras.saving.register_keras_serializable(package="tagrecall")
class ExpertMixture(keras.layers.Layer):
    """[gate (batch, n), expert_1 ... expert_n (batch, d)] -> sum_i gate_i expert_i (MMoE, PLE)."""

    def call(self, inputs):
        gate, experts = inputs[0], ops.stack(inputs[1:], axis=1)
        return ops.sum(ops.expand_dims(gate, -1) * experts, axis=1)


def build_optimizer(optimizer: keras.optimizers.Optimizer, variables: list) -> None:
    """Create ``optimizer``'s slots for ``variables`` (the variables its ``apply`` gets, or
    more) before ``fit``. Without a distribution strategy Keras builds the optimizer in the
    first train step, inside TensorFlow's trace of it, and a tf.function that creates
    variables when it is first traced is traced again: one more trace of the whole train
    step (about 9 s for the default multi-task network on 2 cores, bench/train.py). The
    trainers (models/multitask.py, models/utpm.py) call it from ``compile``."""
    if not optimizer.built:
        optimizer.build(variables)
