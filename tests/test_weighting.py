"""The gradient- and history-based task weightings (models/weighting.py) on toy problems
whose answers are worked out by hand here."""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from models import weighting  # noqa: E402


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=float)


def test_pcgrad_projects_two_conflicting_2d_gradients():
    # g1 . g2 = -1 < 0: g1' = g1 - (-1 / |g2|^2) g2 = (1, 0) + 0.5 (-1, 1) = (0.5, 0.5);
    # g2' = g2 - (-1 / |g1|^2) g1 = (-1, 1) + (1, 0) = (0, 1). Sum (0.5, 1.5).
    np.testing.assert_allclose(_np(weighting.pcgrad([[1.0, 0.0], [-1.0, 1.0]])), [0.5, 1.5], atol=1e-6)
    # Each projected gradient no longer conflicts with the other task's.
    assert np.dot([0.5, 0.5], [-1.0, 1.0]) >= 0 and np.dot([0.0, 1.0], [1.0, 0.0]) >= 0
    # Gradients that agree are summed as they are.
    np.testing.assert_allclose(_np(weighting.pcgrad([[1.0, 2.0], [3.0, 1.0]])), [4.0, 3.0], atol=1e-6)


def test_mgda_min_norm_weights_of_two_gradients():
    # |a (2, 0) + (1 - a) (0, 1)|^2 = 4a^2 + (1 - a)^2, least at 8a = 2(1 - a): a = 0.2.
    np.testing.assert_allclose(_np(weighting.min_norm_weights([2.0, 0.0], [0.0, 1.0])), [0.2, 0.8], atol=1e-6)
    # Orthogonal unit gradients: the midpoint.
    np.testing.assert_allclose(_np(weighting.min_norm_weights([1.0, 0.0], [0.0, 1.0])), [0.5, 0.5], atol=1e-6)
    # g2 already inside the hull's smallest point (g1 = 2 g2): all weight on g2, clipped at 0.
    np.testing.assert_allclose(_np(weighting.min_norm_weights([2.0, 2.0], [1.0, 1.0])), [0.0, 1.0], atol=1e-6)


def test_dwa_weights_from_given_loss_histories():
    # r = (0.5 / 1.0, 0.9 / 1.0) = (0.5, 0.9); T = 2: w = 2 softmax(0.25, 0.45).
    e1, e2 = math.exp(0.25), math.exp(0.45)
    np.testing.assert_allclose(_np(weighting.dwa_weights([0.5, 0.9], [1.0, 1.0], 2.0)),
                               [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rtol=1e-6)
    # The task whose loss falls slower gets more weight; equal ratios give 1 each.
    np.testing.assert_allclose(_np(weighting.dwa_weights([2.0, 4.0], [4.0, 8.0], 2.0)), [1.0, 1.0], rtol=1e-6)
    assert weighting.dwa_weights([1.0, 1.0], None) is None  # the first two epochs: equal weights


def test_dtp_weights_favour_the_task_with_the_worse_kpi():
    # -(1 - k)^2 log k: k = 0.9 -> 0.01 * 0.10536 = 0.0010536; k = 0.5 -> 0.25 * 0.69315 = 0.17329.
    np.testing.assert_allclose(_np(weighting.dtp_weights([0.9, 0.5], 2.0)), [0.0010536, 0.1732868], rtol=1e-4)
    # gamma = 0: -log k, the cross-entropy of the KPI.
    np.testing.assert_allclose(_np(weighting.dtp_weights([0.5], 0.0)), [math.log(2)], rtol=1e-6)


def test_gradnorm_gradient_and_renormalisation_by_hand():
    # w = (1, 1), n = (1, 100): G = (1, 100), mean 50.5; equal loss ratios: targets 50.5 each.
    # d/dw sum |G - t| = sign(G - t) n = (-1, +100).
    np.testing.assert_allclose(_np(weighting.gradnorm_gradient([1.0, 1.0], [1.0, 100.0], [0.5, 50.0],
                                                               [1.0, 100.0], 1.5)), [-1.0, 100.0])
    # A task whose loss fell less (ratio 1 against 0.5) has a higher target: r = (2/1.5)... sign flips.
    # ratios (1.0, 0.5), relative (4/3, 2/3); alpha 1: targets 2 * (4/3, 2/3) = (8/3, 4/3) for G = (2, 2).
    np.testing.assert_allclose(_np(weighting.gradnorm_gradient([1.0, 1.0], [2.0, 2.0], [1.0, 0.5], [1.0, 1.0],
                                                               1.0)), [-2.0, 2.0])
    np.testing.assert_allclose(_np(weighting.renormalise([3.0, 1.0])), [1.5, 0.5])


def _gradnorm_toy(alpha: float, steps: int = 300):
    """Two regressions through one shared layer, the second's loss x 100, trained with
    GradNorm: (w_2 n_2 / w_1 n_1 per step, the targets' ratio (r_2 / r_1)^alpha per step,
    final weights)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    b = rng.normal(size=(8, 4)).astype("float32")
    y1 = np.tanh(x @ (b + 0.3 * rng.normal(size=(8, 4)))).astype("float32")
    y2 = np.tanh(x @ (b + 0.3 * rng.normal(size=(8, 4)))).astype("float32")
    shared = tf.Variable(rng.normal(scale=0.3, size=(8, 16)).astype("float32"))
    heads = [tf.Variable(rng.normal(scale=0.3, size=(16, 4)).astype("float32")) for _ in range(2)]
    w = keras.Variable(np.ones(2, "float32"), trainable=False)
    model_opt, weight_opt = keras.optimizers.SGD(0.01), keras.optimizers.Adam(0.025)
    initial, ratios, targets = None, [], []
    for _ in range(steps):
        with tf.GradientTape(persistent=True) as tape:
            h = tf.tanh(x @ shared)
            parts = [tf.reduce_mean((h @ heads[0] - y1) ** 2), 100.0 * tf.reduce_mean((h @ heads[1] - y2) ** 2)]
            losses = tf.stack(parts)
            total = tf.reduce_sum(tf.convert_to_tensor(w) * losses)
        norms = tf.stack([tf.norm(tape.gradient(part, shared)) for part in parts])
        initial = losses if initial is None else initial
        weight_opt.apply([weighting.gradnorm_gradient(w, norms, losses, initial, alpha)], [w])
        w.assign(weighting.renormalise(w))
        variables = [shared, *heads]
        model_opt.apply(tape.gradient(total, variables), variables)
        ratios.append(float(w[1] * norms[1] / (w[0] * norms[0])))
        r = (losses / initial).numpy()
        targets.append(float((r[1] / r[0]) ** alpha))
    return ratios, targets, _np(w)


def test_gradnorm_equalises_gradient_norms_when_one_loss_is_scaled_by_100():
    # alpha = 0: the target is the mean weighted norm for both tasks, so equal norms.
    ratios, _, w = _gradnorm_toy(alpha=0.0)
    assert ratios[0] > 30  # about 100x apart at the start
    assert 0.7 < np.median(ratios[-50:]) < 1.4, ratios[-50:]
    assert w[0] > 10 * w[1]  # the scaled-up task was turned down
    # alpha = 1.5 (the default): the norms follow the targets (r_2 / r_1)^1.5 instead, the
    # task that trains slower relative to its start getting the larger gradient.
    ratios, targets, _ = _gradnorm_toy(alpha=1.5)
    assert 0.5 < np.median(np.array(ratios[-50:]) / np.array(targets[-50:])) < 2.0
