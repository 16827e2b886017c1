"""Task weightings that look at more than the current losses: their history (dwa, dtp) or
their gradients (gradnorm, mgda, pcgrad). models/layers.py holds the fixed formulas
(equal, fixed, uncertainty); models/multitask.py's trainer applies these.

Each function takes arrays or tensors and computes with keras.ops, so the trainer runs it
inside its compiled train_step and tests/test_weighting.py checks it on toy problems whose
answer is known by hand. Two tasks in tagrecall (click, dwell); the functions take any
number where the method allows.

- DWA (Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", 2019):
  w_k = K exp(r_k / T) / sum_i exp(r_i / T), r_k = L_k(t-1) / L_k(t-2), the epoch-mean
  losses of the last two epochs; 1 each for the first two epochs.
- DTP (Guo et al., "Dynamic Task Prioritization for Multitask Learning", 2018):
  w_k = -(1 - kappa_k)^gamma log(kappa_k), kappa_k a running KPI of task k in (0, 1); the
  task doing worst gets the most weight. tagrecall's KPIs: exp(-BCE) for clicks (the
  geometric mean likelihood) and exp(-MSE) for dwell, smoothed over batches.
- GradNorm (Chen et al., 2018): G_k = w_k |grad_W L_k| on the last shared layer's kernel W;
  the weights move (their own optimiser) to reduce sum_k |G_k - mean(G) r_k^alpha|, with
  r_k = (L_k / L_k(0)) / mean_i (L_i / L_i(0)) and the target held constant, then are
  renormalised to sum to K.
- MGDA-UB (Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", 2018):
  the convex combination of the task gradients with the smallest norm, the gradients taken
  with respect to the shared representation (the upper bound); for two tasks in closed form.
- PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", 2020): each task's gradient
  on the shared parameters loses its component along every other task gradient it
  conflicts with (negative dot product); the projected gradients are summed. The paper
  visits the other tasks in random order; with two tasks the order does not matter.
"""

from __future__ import annotations

from keras import ops

EPS = 1e-12


def dwa_weights(previous, before_previous, temperature: float = 2.0):
    """DWA's weights from the epoch-mean losses of the last two epochs (K equal ones when
    either is None)."""
    if previous is None or before_previous is None:
        return None
    ratio = ops.convert_to_tensor(previous, "float32") / ops.maximum(ops.convert_to_tensor(before_previous,
                                                                                           "float32"), EPS)
    k = ops.cast(ops.shape(ratio)[0], "float32")
    return k * ops.softmax(ratio / temperature)


def dtp_weights(kpis, gamma: float = 2.0):
    """DTP's focal weights -(1 - kappa)^gamma log(kappa) of KPIs in (0, 1)."""
    kappa = ops.clip(ops.convert_to_tensor(kpis, "float32"), 1e-6, 1.0 - 1e-6)
    return -ops.power(1.0 - kappa, gamma) * ops.log(kappa)


def min_norm_weights(g1, g2):
    """MGDA for two tasks: (alpha, 1 - alpha), alpha in [0, 1] minimising
    |alpha g1 + (1 - alpha) g2|^2 (flat gradients)."""
    g1, g2 = ops.convert_to_tensor(g1, "float32"), ops.convert_to_tensor(g2, "float32")
    diff = g1 - g2
    alpha = ops.sum((g2 - g1) * g2) / ops.maximum(ops.sum(diff * diff), EPS)
    alpha = ops.clip(alpha, 0.0, 1.0)
    return ops.stack([alpha, 1.0 - alpha])


def pcgrad(grads):
    """PCGrad on a list of flat task gradients of the shared parameters: their sum after
    each one's projection off the others it conflicts with."""
    grads = [ops.convert_to_tensor(g, "float32") for g in grads]
    total = ops.zeros_like(grads[0])
    for i, g in enumerate(grads):
        projected = g
        for j, h in enumerate(grads):
            if i == j:
                continue
            dot = ops.sum(projected * h)
            projected = ops.where(dot < 0.0, projected - dot / ops.maximum(ops.sum(h * h), EPS) * h, projected)
        total = total + projected
    return total


def gradnorm_gradient(weights, norms, losses, initial_losses, alpha: float = 1.5):
    """The gradient of GradNorm's loss sum_k |w_k n_k - target_k| with respect to the
    weights w, where n_k = |grad_W L_k| and the target is held constant:
    sign(w_k n_k - target_k) n_k."""
    w = ops.convert_to_tensor(weights, "float32")
    n = ops.convert_to_tensor(norms, "float32")
    ratio = ops.convert_to_tensor(losses, "float32") / ops.maximum(ops.convert_to_tensor(initial_losses, "float32"),
                                                                   EPS)
    relative = ratio / ops.maximum(ops.mean(ratio), EPS)
    g = w * n
    target = ops.stop_gradient(ops.mean(g) * ops.power(relative, alpha))
    return ops.sign(g - target) * n


def renormalise(weights, floor: float = 1e-3):
    """Positive weights summing to their number K (GradNorm's renormalisation)."""
    w = ops.maximum(ops.convert_to_tensor(weights, "float32"), floor)
    k = ops.cast(ops.shape(w)[0], "float32")
    return w * k / ops.sum(w)
