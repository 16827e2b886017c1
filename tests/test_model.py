"""The multi-task model: loss formula by hand, the dwell mask, learned weights, save/load, gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from models import layers, metrics  # noqa: E402
from models.data import Statistics  # noqa: E402
from models.multitask import DwaWeights, MultiTaskTrainer, TaskWeightLogger, build_network  # noqa: E402
from models.train import gate  # noqa: E402
from schemas.config import load_config  # noqa: E402
from schemas.features import feature_spec  # noqa: E402


def test_uncertainty_loss_matches_the_formula_by_hand():
    bce, mse, s_click, s_dwell = 0.41, 2.3, -0.7, 0.9
    got = float(layers.combined_loss(bce, mse, "uncertainty", (s_click, s_dwell)))
    by_hand = math.exp(0.7) * 0.41 + 0.5 * -0.7 + 0.5 * math.exp(-0.9) * 2.3 + 0.5 * 0.9
    assert got == pytest.approx(by_hand, rel=1e-6)
    assert float(layers.combined_loss(bce, mse, "equal")) == pytest.approx(2.71, rel=1e-6)
    assert float(layers.combined_loss(bce, mse, "fixed", fixed={"click": 2.0, "dwell": 0.1})) == \
        pytest.approx(0.82 + 0.23, rel=1e-6)
    w = layers.task_weights("uncertainty", (np.float32(s_click), np.float32(s_dwell)))
    assert w["click"] == pytest.approx(math.exp(0.7), rel=1e-6)
    assert w["dwell"] == pytest.approx(0.5 * math.exp(-0.9), rel=1e-6)


def _logit(p):
    return np.log(p / (1.0 - p))


def test_bce_and_the_dwell_mask_by_hand():
    y = np.array([[1.0], [0.0], [1.0], [0.0]], dtype="float32")
    p = np.array([[0.9], [0.2], [0.6], [0.5]], dtype="float64")
    by_hand = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6), math.log(0.5)])
    assert float(layers.binary_crossentropy(y, _logit(p).astype("float32"))) == pytest.approx(by_hand, rel=1e-5)
    dwell = np.array([[3.0], [0.0], [4.0], [0.0]], dtype="float32")
    pred = np.array([[2.0], [9.0], [1.0], [-5.0]], dtype="float32")
    assert float(layers.masked_mse(dwell, pred, y)) == pytest.approx((1.0 + 9.0) / 2, rel=1e-6)
    # what the unclicked rows hold or predict changes nothing
    pred2 = pred.copy()
    pred2[[1, 3]] = 100.0
    assert float(layers.masked_mse(dwell, pred2, y)) == pytest.approx(5.0, rel=1e-6)
    assert float(layers.masked_mse(dwell, pred, np.zeros_like(y))) == 0.0


def test_bce_from_the_logit_is_exact_for_confident_mistakes():
    # A logit of 20 for a non-click costs log(1 + e^20) = 20.000000002; clipping the
    # probability at 1 - 1e-7 would have capped it at 16.1.
    y = np.array([[0.0], [1.0]], dtype="float32")
    logit = np.array([[20.0], [-30.0]], dtype="float32")
    assert float(layers.binary_crossentropy(y, logit)) == pytest.approx((20.0 + 30.0) / 2, rel=1e-5)


def test_trainer_takes_the_click_loss_from_the_logit_output():
    config, spec, stats, x, y = _toy(n=64)
    net = build_network(spec, stats, config.model, ["click", "dwell"])
    out = net.predict_on_batch(x)
    assert set(out) == {"click", "click_logit", "dwell"}
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(out["click_logit"]))), np.asarray(out["click"]),
                               rtol=1e-5)
    trainer = MultiTaskTrainer(net, ["click", "dwell"], "equal", {})
    bce, _ = trainer.task_losses(y, {**out, "click_logit": np.where(y["click"] > 0, -25.0, 25.0).astype("float32")})
    assert float(bce) == pytest.approx(25.0, rel=1e-5)


def test_wide_crosses_are_keras_hashed_crossing_layers():
    config, spec, stats, _, _ = _toy(n=8)
    net = build_network(spec, stats, config.model, ["click"])
    crosses = [layer for layer in net.layers if layer.name.startswith("cross_tag_")]
    assert crosses and all(isinstance(layer, keras.layers.HashedCrossing) for layer in crosses)
    assert all(layer.num_bins == config.model.cross_buckets for layer in crosses)


def _toy(n=4000, seed=0):
    """Rows whose click depends on the tag and long_weight, dwell on the tag."""
    config = load_config(overrides={"features": {"user_features": ["age"]}})
    spec = feature_spec(config)
    rng = np.random.default_rng(seed)
    tags = rng.choice(["t1", "t2", "t3"], n)
    x = {c: np.full((n, 1), "", dtype=object) for c in spec.categorical}
    x["tag"] = tags.reshape(-1, 1).astype(object)
    x["u_age"] = rng.choice(["a", "b"], (n, 1)).astype(object)
    x["position"] = rng.choice(["0", "1", "2"], (n, 1)).astype(object)
    x["hour"] = rng.choice(["9", "20"], (n, 1)).astype(object)
    for c in spec.numeric:
        x[c] = rng.random((n, 1)).astype("float32")
    logit = -1.0 + 2.5 * x["long_weight"].ravel() + np.where(tags == "t1", 1.0, -0.5)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("float32").reshape(-1, 1)
    dwell = (np.where(tags == "t2", 4.0, 2.5) + rng.normal(0, 0.3, n)).astype("float32").reshape(-1, 1) * click
    stats = Statistics(rows=n, clicks=int(click.sum()),
                       vocabularies={c: sorted({str(v) for v in x[c].ravel()}) for c in spec.categorical},
                       mean=[0.4] * len(spec.numeric), variance=[0.05] * len(spec.numeric))
    return config, spec, stats, x, {"click": click, "dwell": dwell, "dwell_mask": click.copy()}


def _fit(weighting, tasks=("click", "dwell"), epochs=3, seed=1, **model_settings):
    import dataclasses

    config, spec, stats, x, y = _toy()
    config = config.replace(model=dataclasses.replace(config.model, **model_settings))
    keras.utils.set_random_seed(seed)
    net = build_network(spec, stats, config.model, list(tasks))
    trainer = MultiTaskTrainer(net, list(tasks), weighting, {"click": 1.0, "dwell": 0.5}, config.model)
    trainer.compile(optimizer=keras.optimizers.Adam(0.01))
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(256)
    callbacks = [TaskWeightLogger(), *([DwaWeights()] if weighting == "dwa" else [])]
    hist = trainer.fit(ds, epochs=epochs, verbose=0, callbacks=callbacks)
    return trainer, net, x, y, hist.history


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm"])
def test_the_train_step_is_traced_once(weighting, monkeypatch):
    """compile builds the optimizers' slots (models/layers.py, build_optimizer): made in the
    first step instead, inside TensorFlow's trace, they make it trace the step again."""
    traces = []
    step = MultiTaskTrainer.train_step
    monkeypatch.setattr(MultiTaskTrainer, "train_step", lambda self, data: traces.append(1) or step(self, data))
    trainer, *_ = _fit(weighting, epochs=2)
    assert len(traces) == 1
    assert trainer.optimizer.iterations.numpy() == 2 * 16   # 4,000 rows in batches of 256, two epochs


def test_learned_task_weights_move_and_are_logged_each_epoch():
    trainer, _, _, _, history = _fit("uncertainty")
    assert len(history["weight_click"]) == 3 and len(history["log_var_dwell"]) == 3
    s = trainer.log_variances()
    assert abs(s["click"]) > 0.05 and abs(s["dwell"]) > 0.05
    assert history["weight_click"][0] != history["weight_click"][-1]
    # Their own learning rate: x10 moves the slow one (dwell) further in the same epochs, and
    # s_click sits at its optimum log(2 BCE) (d/ds of exp(-s) BCE + s / 2 = 0).
    faster, *_, fast_history = _fit("uncertainty", log_var_lr_multiplier=10.0)
    assert abs(faster.log_variances()["dwell"]) > 2 * abs(s["dwell"])
    assert abs(faster.log_variances()["click"] - math.log(2 * fast_history["click_loss"][-1])) < 0.1
    # with fixed weights the log variances do not train
    fixed, *_ = _fit("fixed", epochs=1)
    assert fixed.log_variances() == {"click": 0.0, "dwell": 0.0}


def test_saved_model_loads_with_safe_mode_and_scores_identically(tmp_path):
    _, net, x, _, _ = _fit("uncertainty", epochs=1)
    before = net.predict_on_batch(x)
    net.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    after = loaded.predict_on_batch(x)
    for task in ("click", "dwell"):
        np.testing.assert_allclose(np.asarray(after[task]), np.asarray(before[task]), rtol=1e-6)
    # unseen categories fall in the out-of-vocabulary bucket instead of failing
    x2 = dict(x)
    x2["tag"] = np.full_like(x["tag"], "never-seen")
    assert np.isfinite(np.asarray(loaded.predict_on_batch(x2)["click"])).all()


@pytest.mark.parametrize("weighting", ["dwa", "dtp", "gradnorm", "mgda", "pcgrad"])
def test_every_weighting_trains_logs_its_weights_and_saves(weighting, tmp_path):
    trainer, net, x, y, history = _fit(weighting, epochs=3)
    assert all(np.isfinite(history["loss"])) and len(history["weight_click"]) == 3
    w = np.array([history["weight_click"], history["weight_dwell"]])
    assert np.isfinite(w).all() and (w >= 0).all()
    if weighting == "dwa":  # 1 each for two epochs, then 2 softmax(r / 2) of the epoch losses' ratios
        assert w[:, :2].tolist() == [[1.0, 1.0], [1.0, 1.0]]
        r = np.array([history["click_loss"][1] / history["click_loss"][0],
                      history["dwell_loss"][1] / history["dwell_loss"][0]])
        np.testing.assert_allclose(w[:, 2], 2 * np.exp(r / 2) / np.exp(r / 2).sum(), rtol=1e-5)
    if weighting == "mgda":  # a convex combination
        np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=1e-5)
    if weighting == "gradnorm":  # renormalised to the number of tasks, and moved
        np.testing.assert_allclose(w.sum(axis=0), 2.0, rtol=1e-4)
        assert abs(w[0, -1] - 1.0) > 1e-3
    if weighting == "pcgrad":
        assert (w == 1.0).all()
    if weighting == "dtp":  # -(1 - k)^2 log k of KPIs in (0, 1): positive, below -log(1e-6)
        assert (w > 0).all() and (w < 14).all()
    p = np.asarray(net.predict_on_batch(x)["click"]).ravel()
    assert metrics.auc(y["click"], p) > 0.6
    net.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(x)["click"]).ravel(), p, rtol=1e-6)


@pytest.mark.parametrize("architecture, weighting", [("mmoe", "uncertainty"), ("ple", "equal"),
                                                    ("mmoe", "gradnorm"), ("ple", "pcgrad"), ("mmoe", "mgda")])
def test_every_architecture_trains_saves_loads_and_scores(architecture, weighting, tmp_path):
    trainer, net, x, y, history = _fit(weighting, epochs=2, architecture=architecture, ple_levels=2)
    assert all(np.isfinite(history["loss"]))
    names = {layer.name for layer in net.layers}
    if architecture == "mmoe":
        assert {"expert_0_0", "expert_3_0", "click_gate", "dwell_gate"} <= names
    else:  # two CGC levels: task and shared experts, a shared gate below the last level only
        assert {"click_expert_1_1_0", "shared_expert_1_3_0", "shared_gate_0", "dwell_gate_1"} <= names
        assert "shared_gate_1" not in names
    p = np.asarray(net.predict_on_batch(x)["click"]).ravel()
    assert metrics.auc(y["click"], p) > 0.6
    net.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(x)["click"]).ravel(), p, rtol=1e-6)


def test_gradnorm_measures_the_last_layer_every_task_shares():
    from models.multitask import shared_kernels

    config, spec, stats, *_ = _toy(n=50)
    paths = {}
    for arch in ("shared_bottom", "mmoe", "ple"):
        import dataclasses

        cfg = dataclasses.replace(config.model, architecture=arch, ple_levels=2, experts=3)
        paths[arch] = sorted(k.path for k in shared_kernels(build_network(spec, stats, cfg, ["click", "dwell"])))
    assert paths["shared_bottom"] == ["bottom_1/kernel"]
    assert paths["mmoe"] == ["expert_0_0/kernel", "expert_1_0/kernel", "expert_2_0/kernel"]
    assert paths["ple"] == ["shared_expert_1_0_0/kernel", "shared_expert_1_1_0/kernel", "shared_expert_1_2_0/kernel"]


def test_entire_space_dwell_loss_by_hand():
    """ESMM's entire space: rows without a click count with target 0 against p x m."""
    import dataclasses

    config, spec, stats, x, y = _toy(n=8)
    net = build_network(spec, stats, config.model, ["click", "dwell"])
    cfg = dataclasses.replace(config.model, dwell_space="entire")
    trainer = MultiTaskTrainer(net, ["click", "dwell"], "equal", {}, cfg)
    logit = np.array([[0.0], [1.0], [-1.0], [2.0]], "float32")
    m = np.array([[3.0], [2.0], [1.0], [4.0]], "float32")
    labels = {"click": np.array([[1], [0], [1], [1]], "float32"), "dwell": np.array([[2.5], [0], [1.0], [0]], "float32"),
              "dwell_mask": np.array([[1], [0], [1], [0]], "float32")}  # the last click's dwell is unknown
    _, mse = trainer.task_losses(labels, {"click_logit": logit, "click": 1 / (1 + np.exp(-logit)), "dwell": m})
    p = 1 / (1 + np.exp(-logit.ravel()))
    # rows 0, 1, 2 count (row 3 is a click of unknown dwell): (2.5 - p0 3)^2, (0 - p1 2)^2, (1 - p2 1)^2
    want = ((2.5 - 3 * p[0]) ** 2 + (2 * p[1]) ** 2 + (1 - p[2]) ** 2) / 3
    assert float(keras.ops.convert_to_numpy(mse)) == pytest.approx(want, rel=1e-5)
    trainer, net, x, y, history = _fit("uncertainty", epochs=2, dwell_space="entire")
    assert all(np.isfinite(history["loss"]))


def test_the_model_learns_the_signal_in_the_toy_data():
    _, net, x, y, _ = _fit("uncertainty", epochs=4)
    p = np.asarray(net.predict_on_batch(x)["click"]).ravel()
    assert metrics.auc(y["click"], p) > 0.65


def test_single_task_models_have_one_head():
    _, net, x, _, _ = _fit("uncertainty", tasks=("click",), epochs=1)
    assert set(net.predict_on_batch(x)) == {"click", "click_logit"}


def test_auc_and_gauc_by_hand():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.auc([1, 1], [0.2, 0.3]) is None
    # user a: AUC 1 over 2 rows, user b: AUC 0 over 4 rows, user c: one class (left out)
    g = metrics.gauc(["a", "a", "b", "b", "b", "b", "c"], [0, 1, 1, 1, 0, 0, 1],
                     [0.1, 0.9, 0.1, 0.2, 0.8, 0.9, 0.5])
    assert g == pytest.approx((1.0 * 2 + 0.0 * 4) / 6)


def test_gate_refuses_a_worse_model_and_non_finite_losses():
    hist = {"loss": [0.5, 0.4], "val_click_loss": [0.3, 0.29]}
    ok, why = gate({"auc": 0.70, "log_loss": 0.3}, {"version": "v1", "auc": 0.72}, 0.005, ["click", "dwell"], hist)
    assert not ok and "below the current model's" in why
    ok, _ = gate({"auc": 0.716, "log_loss": 0.3}, {"version": "v1", "auc": 0.72}, 0.005, ["click", "dwell"], hist)
    assert ok
    ok, why = gate({"auc": 0.8, "log_loss": 0.3}, None, 0.005, ["click", "dwell"], {"loss": [0.5, float("nan")]})
    assert not ok and "not finite" in why
    ok, why = gate({"auc": 0.8, "log_loss": 0.3}, None, 0.005, ["dwell"], hist)
    assert not ok and "no click head" in why
    # Calibration: mean p_click / click rate within the bounds, both ends included.
    for cal, promoted in ((0.49, False), (0.5, True), (1.3, True), (2.0, True), (2.01, False)):
        ok, why = gate({"auc": 0.8, "log_loss": 0.3, "calibration": cal}, None, 0.005, ["click"], hist, (0.5, 2.0))
        assert ok == promoted, (cal, why)
    assert "calibration 2.010" in why and "0.5..2" in why
