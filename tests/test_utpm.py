"""The user-tag profile model's parts against hand computations (no Spark)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from models import utpm, utpm_train  # noqa: E402


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_the_joint_loss_equals_a_hand_computation_on_two_articles():
    # Article 1: tags with scores 2.0 and -1.0, weights 0.75 / 0.25, clicked.
    # Article 2: one tag, score 0.5 (one padded slot), not clicked.
    scores = np.array([[2.0, -1.0], [0.5, 9.0]], np.float32)
    weights = np.array([[0.75, 0.25], [1.0, 0.0]], np.float32)
    click = np.array([1.0, 0.0], np.float32)
    p1 = _sigmoid(0.75 * 2.0 + 0.25 * -1.0)
    p2 = _sigmoid(0.5)
    expected = (-math.log(p1) - math.log(1.0 - p2)) / 2
    got = utpm.joint_loss(scores, weights, weights > 0, click)
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(expected, rel=1e-5)


def test_the_split_and_softmax_losses_equal_hand_computations():
    scores = np.array([[2.0, -1.0], [0.5, 9.0]], np.float32)
    weights = np.array([[0.75, 0.25], [1.0, 0.0]], np.float32)
    click = np.array([1.0, 0.0], np.float32)
    split = (-math.log(_sigmoid(2.0)) - math.log(_sigmoid(-1.0)) - math.log(1 - _sigmoid(0.5))) / 3
    got = utpm.split_loss(scores, weights > 0, click)
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(split, rel=1e-5)
    # Softmax over a vocabulary of 3 tags: the clicked article's tags are ids 0 and 1.
    all_scores = np.array([[2.0, -1.0, 0.3], [0.5, 0.0, 0.0]], np.float32)
    log_z = math.log(math.exp(2.0) + math.exp(-1.0) + math.exp(0.3))
    softmax = -(0.75 * (2.0 - log_z) + 0.25 * (-1.0 - log_z))   # only the clicked row counts
    got = utpm.softmax_loss(scores, weights, weights > 0, click, all_scores=all_scores)
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(softmax, rel=1e-5)


def test_attention_weights_sum_to_one_and_ignore_padding():
    rng = np.random.default_rng(0)
    layer = utpm.FieldAttention(heads=2, units=4)
    items = rng.normal(size=(3, 5, 4)).astype(np.float32)
    weights = rng.uniform(0.1, 2.0, size=(3, 5)).astype(np.float32)
    present = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer(items, weights, present)
    layer.query.assign(rng.normal(size=(4, 2)).astype(np.float32))
    alpha = keras.ops.convert_to_numpy(layer.attention(items, weights, present))
    assert alpha.shape == (3, 2, 5)
    np.testing.assert_allclose(alpha.sum(axis=-1), 1.0, rtol=1e-5)
    assert (alpha[~np.broadcast_to(present[:, None, :], alpha.shape)] == 0).all()
    # Whatever sits in the padded slots, the pooled vectors are the same.
    noisy_items, noisy_weights = items.copy(), weights.copy()
    noisy_items[~present] = 100.0
    noisy_weights[~present] = 50.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(items, weights, present)),
                               keras.ops.convert_to_numpy(layer(noisy_items, noisy_weights, present)), rtol=1e-6)
    # With a zero query the pooling is the weighted mean of the items.
    layer.query.assign(np.zeros((4, 2), np.float32))
    pooled = keras.ops.convert_to_numpy(layer(items, weights, present))
    w = weights * present
    expected = (items * (w / w.sum(1, keepdims=True))[..., None]).sum(1)
    np.testing.assert_allclose(pooled[:, 0], expected, rtol=1e-5)
    # A row of padding only pools to zeros.
    empty = keras.ops.convert_to_numpy(layer(items, weights, np.zeros_like(present)))
    assert (empty == 0).all()


def test_the_fm_layer_equals_the_brute_force_pairwise_sum():
    rng = np.random.default_rng(1)
    fields = rng.normal(size=(4, 6, 2, 3)).astype(np.float32)   # (batch, fields, heads, dim)
    brute = sum(fields[:, i] * fields[:, j] for i, j in itertools.combinations(range(6), 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(utpm.FMCross()(fields)), brute, rtol=1e-4, atol=1e-5)


# Three field vectors of one user, the pairs' elementwise products worked by hand:
# f1 * f2 = (3, -2), f1 * f3 = (0.5, 8), f2 * f3 = (1.5, -4).
THREE_FIELDS = np.array([[[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]]], np.float32)
PAIR_PRODUCTS = np.array([[3.0, -2.0], [0.5, 8.0], [1.5, -4.0]])


def test_nfm_bi_interaction_pooling_of_three_vectors_equals_a_hand_computation():
    # NFM's bi-interaction: (3, -2) + (0.5, 8) + (1.5, -4) = (5, 2); as 0.5 x ((sum f)^2 -
    # sum f^2): sum f = (4.5, 5), squared (20.25, 25); sum f^2 = (10.25, 21); half the gap (5, 2).
    got = keras.ops.convert_to_numpy(utpm.FMCross()(THREE_FIELDS))
    np.testing.assert_allclose(got, [[5.0, 2.0]], rtol=1e-6)


def _pair_attention(query=(1.0, -0.5)):
    layer = utpm.PairAttentionPooling(units=2)
    layer(THREE_FIELDS)
    layer.project.kernel.assign(np.array([[1.0, 2.0], [0.0, 1.0]], np.float32))   # p W = (p1, 2 p1 + p2)
    layer.project.bias.assign(np.array([0.0, 0.5], np.float32))
    layer.query.assign(np.array(query, np.float32))
    return layer


def test_afm_pair_attention_pooling_equals_a_hand_computation():
    layer = _pair_attention()
    # ReLU(p W + b) per pair: (3, 4.5), (0.5, 9.5), (1.5, 0) [-0.5 cut]; h = (1, -0.5):
    # logits 3 - 2.25 = 0.75, 0.5 - 4.75 = -4.25, 1.5.
    e = np.exp([0.75, -4.25, 1.5])
    alpha = e / e.sum()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.attention(THREE_FIELDS)), [alpha], rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(THREE_FIELDS)), [alpha @ PAIR_PRODUCTS], rtol=1e-5)
    # With h = 0 every pair weighs the same: the mean of the products, (5, 2) / 3.
    flat = _pair_attention(query=(0.0, 0.0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(flat(THREE_FIELDS)), [[5 / 3, 2 / 3]], rtol=1e-5)


def test_afm_pair_attention_skips_the_pairs_of_an_absent_field():
    layer = _pair_attention()
    fields = np.repeat(THREE_FIELDS, 3, axis=0)
    present = np.array([[True, True, False], [True, False, False], [True, True, True]])
    alpha = keras.ops.convert_to_numpy(layer.attention(fields, present))
    # Row 1: only the pair (1, 2) is left, all the weight on it; row 2: no pair at all.
    np.testing.assert_allclose(alpha[0], [1.0, 0.0, 0.0], atol=1e-7)
    assert (alpha[1] == 0).all()
    pooled = keras.ops.convert_to_numpy(layer(fields, present))
    np.testing.assert_allclose(pooled[0], [3.0, -2.0], rtol=1e-6)
    np.testing.assert_allclose(pooled[1], [0.0, 0.0])
    e = np.exp([0.75, -4.25, 1.5])
    np.testing.assert_allclose(pooled[2], e / e.sum() @ PAIR_PRODUCTS, rtol=1e-5)


def test_afm_pair_attention_refuses_fewer_than_two_fields():
    with pytest.raises(ValueError, match=r"k >= 2"):
        utpm.PairAttentionPooling(units=2)(THREE_FIELDS[:, :1])


def _network(tower="utpm", echo="posterior"):
    tags = ["a", "b", "c", "d"]
    return utpm.build_network(["age"], ["long", "shown"], {"u_age": ["x", "y"]}, tags, 3, embedding_dim=4,
                              heads=2, units=(8,), user_dim=5, tower=tower, echo=echo), tags


def _inputs():
    return {"u_age": np.array([["x"], ["nobody"]], dtype=object),
            "long_tags": np.array([["a", "b", ""], ["", "", ""]], dtype=object),
            "long_weights": np.array([[1, 2, 0], [0, 0, 0]], np.float32),
            "shown_tags": np.array([["c", "d", "zz"], ["a", "", ""]], dtype=object),
            "shown_weights": np.ones((2, 3), np.float32)}


def test_scores_are_the_user_vector_times_the_tag_table_plus_bias_plus_the_echo_of_the_shares():
    (user_model, network), tags = _network(echo="share")
    network.get_layer("field_echo").beta.assign(np.array([0.5, 2.0], np.float32))
    x = _inputs()
    u = keras.ops.convert_to_numpy(user_model(x)["user"])
    layer = network.get_layer("tag_scores")
    e, b = (keras.ops.convert_to_numpy(w) for w in (layer.embeddings, layer.bias))
    # By hand (tags a b c d): row 1: long a 1/3, b 2/3 (x 0.5); shown c, d, zz 1/3 each (x 2,
    # zz unknown: no column); row 2: long empty, shown a 1 (x 2).
    echo = np.array([[0.5 / 3, 1.0 / 3, 2.0 / 3, 2.0 / 3], [2.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(network.predict_on_batch(x)["scores"], u @ e.T + b + echo, rtol=1e-5, atol=1e-6)


def test_posterior_scores_add_the_weighted_counts_to_the_exponentiated_tower_score():
    (user_model, network), tags = _network(echo="posterior")
    # softplus(beta) = (0.5, 2.0): beta = log(e^c - 1)
    network.get_layer("field_echo").beta.assign(np.log(np.expm1(np.array([0.5, 2.0]))).astype(np.float32))
    x = _inputs()
    u = keras.ops.convert_to_numpy(user_model(x)["user"])
    layer = network.get_layer("tag_scores")
    e, b = (keras.ops.convert_to_numpy(w) for w in (layer.embeddings, layer.bias))
    # By hand (tags a b c d): row 1: long a 1, b 2 (x 0.5); shown c, d, zz 1 each (x 2, zz
    # unknown: no column); row 2: long empty, shown a 1 (x 2).
    counts = np.array([[0.5, 1.0, 2.0, 2.0], [2.0, 0.0, 0.0, 0.0]])
    want = np.log(np.exp(u @ e.T + b) + counts)
    np.testing.assert_allclose(network.predict_on_batch(x)["scores"], want, rtol=1e-5, atol=1e-6)
    # The softmax is the prior's mass plus the counts, normalised (a Dirichlet posterior).
    p = keras.ops.convert_to_numpy(keras.ops.softmax(network.predict_on_batch(x)["scores"], axis=-1))
    raw = np.exp(u @ e.T + b) + counts
    np.testing.assert_allclose(p, raw / raw.sum(axis=1, keepdims=True), rtol=1e-5)


def test_an_echo_saved_before_the_modes_existed_loads_as_the_share_echo():
    old = {"name": "field_echo", "trainable": True, "dtype": "float32", "tags": 4, "fields": 2}
    assert utpm.FieldEcho.from_config(old).mode == "share"
    assert utpm.FieldEcho.from_config({**old, "mode": "posterior"}).mode == "posterior"


def test_the_trainer_scores_the_queried_tags_as_the_network_scores_the_vocabulary():
    for echo in utpm.TAG_MODEL_ECHOES:
        (user_model, network), tags = _network(echo=echo)
        trainer = utpm.UTPMTrainer(user_model, network, "softmax")
        out = user_model(_inputs())
        full = keras.ops.convert_to_numpy(trainer.all_scores(out))
        ids = np.array([[3, 0, 2], [1, 1, 0]], np.int32)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(trainer.scores_at(out, ids)),
                                   np.take_along_axis(full, ids, axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(full, network.predict_on_batch(_inputs())["scores"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tower", utpm.TOWERS)
def test_a_saved_model_loads_with_safe_mode_and_scores_the_same(tmp_path, tower):
    (user_model, network), _ = _network(tower)
    network.get_layer("tag_scores").bias.assign(np.array([0.1, -0.2, 0.3, 0.0], np.float32))
    network.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict_on_batch(_inputs())["scores"],
                               network.predict_on_batch(_inputs())["scores"], rtol=1e-6)


@pytest.mark.parametrize("tower", ["afm", "nfm"])
def test_afm_and_nfm_networks_round_trip_with_every_weight_moved(tmp_path, tower):
    """Every variable set away from its initial value first (AFM's attention query starts
    at zero, NFM's layer norm at one and zero), so the loaded scores match only if each
    variable of the new towers is saved and restored."""
    (user_model, network), _ = _network(tower)
    rng = np.random.default_rng(3)
    for v in network.weights:
        v.assign(rng.normal(0.0, 0.5, size=v.shape).astype(v.dtype))
    before = network.predict_on_batch(_inputs())["scores"]
    network.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict_on_batch(_inputs())["scores"], before)
    layer = {"afm": "pair_attention", "nfm": "bi_interaction_norm"}[tower]
    for a, b in zip(network.get_layer(layer).weights, loaded.get_layer(layer).weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_the_afm_tower_attends_only_to_pairs_of_fields_the_user_has():
    """The second user of ``_inputs`` has an empty long field: inside the network AFM's
    pooling over (age, long, shown) must equal the pooling of the pair (age, shown) alone."""
    (user_model, network), _ = _network("afm")
    layer = network.get_layer("pair_attention")
    layer.query.assign(np.array([1.0, -2.0, 0.5, 3.0], np.float32))
    probe = keras.Model(network.inputs, {"fields": network.get_layer("fields_flat").output,
                                         "pooled": layer.output})
    out = probe.predict_on_batch(_inputs())
    fields = out["fields"].reshape(2, 3, 4)                      # (users, age long shown, dim)
    assert (fields[1, 1] == 0).all() and not (fields[1, 0] == 0).all()
    only_pair = keras.ops.convert_to_numpy(layer(fields[1:, [0, 2]]))
    np.testing.assert_allclose(out["pooled"][1:], only_pair, rtol=1e-5, atol=1e-7)
    # Without the mask the zero pairs would take a share of the attention.
    unmasked = keras.ops.convert_to_numpy(layer(fields[1:]))
    assert not np.allclose(unmasked, only_pair, rtol=1e-3)


def test_every_tower_loads_in_a_fresh_interpreter(tmp_path):
    """As the scoring workers load it: import models.utpm, then load_model with safe_mode
    (a layer of keras-rs must be registered without the test having built one first)."""
    import subprocess
    import sys

    for tower in utpm.TOWERS:
        _network(tower)[0][1].save(tmp_path / f"{tower}.keras")
    code = ("import sys, keras, models.utpm\n"
            "for path in sys.argv[1:]:\n"
            "    keras.saving.load_model(path, safe_mode=True)\n")
    done = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / f"{t}.keras") for t in utpm.TOWERS)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("loss", "tower"), [*((loss, "utpm") for loss in utpm.LOSSES),
                                             *(("softmax", t) for t in utpm.TOWERS if t != "utpm")])
def test_each_loss_and_tower_learns_a_planted_preference(loss, tower):
    """Users whose long field holds tag "a" click articles tagged "a" and skip "b"; the
    others the reverse. After training, each group's best tag is its own. The echo term
    is held at zero, so the user tower alone must carry the preference."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)  # the initial weights too: the outcome must not hang on the tests run before
    (user_model, network), tags = _network(tower)
    echo = network.get_layer("field_echo")
    echo.beta.assign(np.full(2, -40.0, np.float32))   # softplus(-40) = 4e-18: no counts reach the score
    echo.trainable = False
    n = 256
    group = np.arange(n) % 2
    x = {"u_age": np.full((n, 1), "x", dtype=object),
         "long_tags": np.where(group[:, None] == 0, np.array([["a", "", ""]]), np.array([["b", "", ""]])).astype(object),
         "long_weights": np.tile(np.array([[1, 0, 0]], np.float32), (n, 1)),
         "shown_tags": np.full((n, 3), "", dtype=object), "shown_weights": np.zeros((n, 3), np.float32)}
    shown = np.arange(n) // 2 % 2               # which article each impression shows: tag a (0) or b (1)
    y = {"click": (shown == group).astype(np.float32), "article_ids": shown.reshape(-1, 1).astype(np.int32),
         "article_weights": np.ones((n, 1), np.float32)}
    trainer = utpm.UTPMTrainer(user_model, network, loss, seed=0)
    trainer.compile(keras.optimizers.Adam(0.02))
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=0).batch(32), epochs=15, verbose=0)
    scores = network.predict_on_batch({k: v[:2] for k, v in x.items()})["scores"]
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]


def test_the_train_step_is_traced_once(monkeypatch):
    """UTPMTrainer.compile builds the optimizer's slots (models/layers.py, build_optimizer):
    made in the first step instead, inside TensorFlow's trace, they make it trace again."""
    import tensorflow as tf

    traces = []
    monkeypatch.setattr(utpm.UTPMTrainer, "train_step",
                        lambda self, data: traces.append(1) or keras.Model.train_step(self, data), raising=False)
    (user_model, network), _ = _network()
    n = 64
    x = {k: np.repeat(v[:1], n, axis=0) for k, v in _inputs().items()}
    y = {"click": np.ones(n, np.float32), "article_ids": np.zeros((n, 1), np.int32),
         "article_weights": np.ones((n, 1), np.float32)}
    trainer = utpm.UTPMTrainer(user_model, network, "softmax", seed=0)
    trainer.compile(keras.optimizers.Adam(0.01))
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=2, verbose=0)
    assert len(traces) == 1 and trainer.optimizer.iterations.numpy() == 8


def _planted(n: int, seed: int = 0):
    """Impressions of articles tagged a..d by users with a long field; about a third clicked,
    some clicked ones with no tag in the vocabulary (weights 0), and rows 0..15 unclicked."""
    rng = np.random.default_rng(seed)
    tags = np.array(["a", "b", "c", "d"], dtype=object)
    x = {"u_age": rng.choice(np.array(["x", "y"], dtype=object), (n, 1)),
         "long_tags": rng.choice(tags, (n, 3)), "long_weights": rng.random((n, 3)).astype(np.float32),
         "shown_tags": rng.choice(tags, (n, 3)), "shown_weights": rng.random((n, 3)).astype(np.float32)}
    click = (rng.random(n) < 0.35).astype(np.float32)
    click[:16] = 0.0
    weights = rng.random((n, 2)).astype(np.float32)
    weights[rng.random(n) < 0.1] = 0.0
    y = {"click": click, "article_ids": rng.integers(0, 4, (n, 2)).astype(np.int32), "article_weights": weights}
    return x, y


def test_rows_outside_the_softmax_loss_leave_each_batch_after_it_is_drawn():
    x, y = _planted(200)
    keep = utpm_train.rows_in_loss(y, "softmax")
    np.testing.assert_array_equal(keep, (y["click"] == 1) & (y["article_weights"].sum(axis=1) > 0))
    assert 0 < keep.sum() < len(keep) and utpm_train.rows_in_loss(y, "joint") is None
    assert utpm_train.rows_in_loss(y, "split") is None
    with utpm_train._tf_data(x, y, 32, seed=3) as every, utpm_train._tf_data(x, y, 32, seed=3, keep=keep) as kept:
        for _epoch in range(2):  # a new order each epoch, the same one for both
            pairs = list(zip(every, kept, strict=True))
            assert len(pairs) == 7
            for (x_all, y_all), (x_kept, y_kept) in pairs:
                mask = (y_all["click"].numpy() == 1) & (y_all["article_weights"].numpy().sum(axis=1) > 0)
                for name in ("click", "article_ids", "article_weights"):
                    np.testing.assert_array_equal(y_kept[name].numpy(), y_all[name].numpy()[mask])
                for name in x:
                    np.testing.assert_array_equal(x_kept[name].numpy(), x_all[name].numpy()[mask])


def test_the_batches_let_go_of_the_arrays_when_the_block_ends():
    """TensorFlow keeps a numpy_function's Python function for the life of the process: the
    inputs must not stay with it."""
    import gc
    import weakref

    x, y = _planted(40)
    probe = weakref.ref(next(iter(x.values())))
    with utpm_train._tf_data(x, y, 16, seed=1) as batches:
        assert sum(len(b[1]["click"]) for b in batches) == 40
    del x, y, batches
    gc.collect()
    assert probe() is None


def test_training_on_the_rows_in_the_softmax_loss_gives_the_training_on_every_row():
    """Same batches, same losses, same weights (to float rounding), including a batch with
    no clicked row (rows 0..15, in order, batch 16)."""
    x, y = _planted(160)
    keep = utpm_train.rows_in_loss(y, "softmax")
    assert not keep[:16].any()
    runs = []
    for rows in (None, keep):
        keras.utils.set_random_seed(0)
        (user_model, network), _ = _network()
        trainer = utpm.UTPMTrainer(user_model, network, "softmax", seed=0)
        trainer.compile(keras.optimizers.Adam(0.01))
        with utpm_train._tf_data(x, y, 16, None, rows) as batches, \
                utpm_train._tf_data(x, y, 16, None, rows) as validation:
            history = trainer.fit(batches, epochs=3, verbose=0, validation_data=validation).history
        runs.append((history, [w.numpy() for w in trainer.trainable_variables]))
    (h_all, w_all), (h_kept, w_kept) = runs
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h_kept[key], h_all[key], rtol=1e-5)
    for a, b in zip(w_all, w_kept, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert h_all["loss"][-1] < h_all["loss"][0]  # it trained


def test_padding_cuts_and_fills_each_list():
    col = pa.array([["a", "b", "c"], [], ["d"], None], pa.list_(pa.string())).slice(0, 3)
    assert utpm_train.pad(col, 2, "", object).tolist() == [["a", "b"], ["", ""], ["d", ""]]
    sliced = pa.array([[1.0], [2.0, 3.0], [4.0, 5.0, 6.0]], pa.list_(pa.float64())).slice(1)
    assert utpm_train.pad(sliced, 3, 0.0, np.float32).tolist() == [[2, 3, 0], [4, 5, 6]]


def test_labels_drop_tags_outside_the_vocabulary():
    tags = pa.array([[{"tag": "a", "weight": 0.5}, {"tag": "zz", "weight": 0.5}], [{"tag": "b", "weight": 1.0}]],
                    pa.list_(pa.struct([("tag", pa.string()), ("weight", pa.float64())])))
    tbl = pa.table({"article_tags": tags, "click": pa.array([1, 0], pa.int32())})
    got = utpm_train.labels(tbl, {"a": 0, "b": 1}, 3)
    assert got["article_ids"].tolist() == [[0, 0, 0], [1, 0, 0]]
    assert got["article_weights"].tolist() == [[0.5, 0, 0], [1, 0, 0]]
    assert got["click"].tolist() == [1, 0]


ITEM = st.sampled_from(["a", "b", "zz", "", "é"])


@settings(max_examples=60, deadline=None)
@given(lists=st.lists(st.one_of(st.none(), st.lists(st.tuples(ITEM, st.floats(0, 1)), max_size=5)), max_size=6),
       start=st.integers(0, 2), length=st.integers(1, 4))
def test_labels_equal_a_lookup_of_each_padded_tag(lists, start, length):
    """labels() against a per-cell dict lookup, on sliced columns too (an offset list array)."""
    typ = pa.list_(pa.struct([("tag", pa.string()), ("weight", pa.float64())]))
    col = pa.array([None if x is None else [{"tag": t, "weight": w} for t, w in x] for x in lists], typ)
    col = col.slice(min(start, len(col)))
    tag_ids = {"b": 0, "a": 1, "é": 2}      # ids not in insertion order of the names
    got = utpm_train.labels(pa.table({"article_tags": col, "click": pa.array([1] * len(col), pa.int32())}),
                            tag_ids, length)
    for r, items in enumerate(col.to_pylist()):
        head = (items or [])[:length]
        cells = head + [None] * (length - len(head))
        ids = [tag_ids.get(c["tag"], -1) if c else -1 for c in cells]
        assert got["article_ids"][r].tolist() == [max(i, 0) for i in ids]
        want = [np.float32(c["weight"]) if c and i >= 0 else 0.0 for c, i in zip(cells, ids, strict=True)]
        assert got["article_weights"][r].tolist() == want


def test_vocabularies_are_every_value_seen_sorted_without_the_empty_string():
    typ = pa.list_(pa.struct([("tag", pa.string()), ("weight", pa.float64())]))
    tbl = pa.table({"u_age": pa.array(["30", None, "20", "30", ""]),
                    "article_tags": pa.array([[{"tag": "c", "weight": 1.0}], [], None, [{"tag": "", "weight": 1.0}],
                                              [{"tag": "a", "weight": 0.5}]], typ),
                    "long_tags": pa.array([["b", "c"], ["d"], None, [], [""]], pa.list_(pa.string()))})
    vocab, tags = utpm_train.vocabularies(tbl, ["age"], ["long"])
    assert vocab == {"u_age": ["20", "30"]} and tags == ["a", "b", "c", "d"]


def test_read_samples_the_same_seeded_rows_as_a_sample_of_the_whole_table(tmp_path):
    import pyarrow.parquet as pq

    from models import tables

    files = []
    for k, n in enumerate([7, 0, 12, 5]):
        f = tmp_path / f"part-{k}.parquet"
        pq.write_table(pa.table({"i": pa.array(range(100 * k, 100 * k + n), pa.int64())}), f)
        files.append(str(f))
    part = tables.Partition("tag_examples", "2026-01-01", tuple(files), tuple(Path(f).stat().st_size for f in files))
    every = [i for k, n in enumerate([7, 0, 12, 5]) for i in range(100 * k, 100 * k + n)]
    assert utpm_train.read([part]).column("i").to_pylist() == every
    assert utpm_train.read([part], limit=24).column("i").to_pylist() == every
    keep = np.sort(np.random.default_rng(5).choice(len(every), 10, replace=False))
    assert utpm_train.read([part], limit=10, seed=5).column("i").to_pylist() == [every[i] for i in keep]


def test_top_tags_orders_by_score_then_by_column():
    idx, top = utpm_train.top_tags(np.array([[0.1, 0.5, 0.5, -1.0]]), 3)
    assert idx.tolist() == [[1, 2, 0]] and top.tolist() == [[0.5, 0.5, 0.1]]


def test_interest_is_the_users_log_probability_minus_the_average_users():
    scores = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    prior = np.array([0.5, 0.25, 0.25])
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(utpm_train.interest(scores, prior), np.log(p) - np.log(prior), rtol=1e-12)
    np.testing.assert_allclose(utpm_train.interest(scores, prior, 0.5), np.log(p) - 0.5 * np.log(prior), rtol=1e-12)
    np.testing.assert_allclose(utpm_train.interest(scores, prior, 0.0), np.log(p), rtol=1e-12)
    # Scores shifted per row give the same probabilities, hence the same interest.
    np.testing.assert_allclose(utpm_train.interest(scores + np.array([[100.0], [-50.0]]), prior),
                               np.log(p) - np.log(prior), rtol=1e-9)


def test_the_tag_prior_averages_each_users_probabilities_once():
    class Fixed:   # a model whose scores are the input itself
        def predict_on_batch(self, x):
            return {"scores": x["s"]}

    s = np.array([[0.0, 0.0], [math.log(3.0), 0.0], [math.log(3.0), 0.0]])   # users a, b, b
    rows = pa.table({"user_id": ["a", "b", "b"]})
    # a: (1/2, 1/2); b once: (3/4, 1/4); mean (5/8, 3/8), not the per-row (2/3, 1/3).
    np.testing.assert_allclose(utpm_train.tag_prior(Fixed(), {"s": s}, rows), [5 / 8, 3 / 8], rtol=1e-12)


# ---- scoring: the fast paths against straightforward references ------------------------------

def _ranked(row: list[float], m: int) -> list[int]:
    """A row's m best columns by Python's sort: score descending, ties by column, NaN last."""
    return sorted(range(len(row)), key=lambda j: (math.isnan(row[j]), 0.0 if math.isnan(row[j]) else -row[j], j))[:m]


# A few values, so that most rows have ties, at the m-th place too.
TIED = st.sampled_from([-1.5, -0.0, 0.0, 0.5, 2.0, math.inf, -math.inf, math.nan])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), t=st.integers(1, 30), n=st.integers(0, 6), m=st.integers(1, 35),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_top_tags_equals_a_full_sort_by_score_then_column(data, t, n, m, dtype):
    rows = data.draw(st.lists(st.lists(TIED, min_size=t, max_size=t), min_size=n, max_size=n))
    scores = np.array(rows, dtype=dtype).reshape(n, t)
    idx, top = utpm_train.top_tags(scores, m)
    assert idx.shape == (n, min(m, t)) and top.dtype == scores.dtype
    assert idx.tolist() == [_ranked([float(v) for v in r], m) for r in scores]
    np.testing.assert_array_equal(top, np.array([[r[j] for j in i] for r, i in zip(scores, idx, strict=True)],
                                                dtype=dtype).reshape(top.shape))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), t=st.integers(1, 25), n=st.integers(1, 5), w=st.sampled_from([0.0, 0.5, 1.0, 0.3]))
def test_interest_at_the_top_columns_equals_the_log_probability_less_the_weighted_log_prior(data, t, n, w):
    rows = data.draw(st.lists(st.lists(st.floats(-30, 30, width=32), min_size=t, max_size=t), min_size=n, max_size=n))
    prior = data.draw(st.lists(st.sampled_from([0.0, 1e-320, 0.01, 0.2, 1.0]), min_size=t, max_size=t))
    scores = np.array(rows, np.float32)
    idx, _ = utpm_train.top_tags(scores, data.draw(st.integers(1, t)))
    log_prior = np.log(np.maximum(np.array(prior), 1e-300))
    got = utpm_train.interest_at(scores, idx, log_prior, w)
    for r, i, g in zip(scores.astype(float), idx, got, strict=True):
        top = max(r)
        log_z = math.log(math.fsum(math.exp(v - top) for v in r))
        want = [r[j] - top - log_z - w * math.log(max(prior[j], 1e-300)) for j in i]
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)
    # The very numbers of the whole-matrix definition, gathered.
    full = utpm_train.interest(scores.astype(np.float64), np.array(prior), w)
    np.testing.assert_array_equal(got, np.take_along_axis(full, idx, axis=1))


# Tags as they come: empty, non-ASCII, a NUL inside or at the end, and longer than
# utpm_train.FIXED_WIDTH_MAX bytes (those columns go as Python strings).
TAG = st.one_of(st.text(max_size=5), st.sampled_from(["", "ünï", "日本語", "a\x00b", "ab\x00"]),
                st.text(min_size=utpm_train.FIXED_WIDTH_MAX - 1, max_size=utpm_train.FIXED_WIDTH_MAX + 3))


@settings(max_examples=150, deadline=None)
@given(users=st.lists(st.tuples(st.one_of(st.none(), TAG),
                                st.one_of(st.none(), st.lists(st.one_of(st.none(), TAG), max_size=5))),
                      max_size=7),
       length=st.integers(1, 4), start=st.integers(0, 2))
def test_string_inputs_give_the_string_tensors_of_the_python_strings_cut_and_padded(users, length, start):
    import tensorflow as tf

    tbl = pa.table({"user_id": [str(i) for i in range(len(users))],
                    "u_age": pa.array([u for u, _ in users], pa.string()),
                    "long_tags": pa.array([t for _, t in users], pa.list_(pa.string())),
                    "long_weights": pa.array([None if t is None else [float(k) for k in range(len(t))]
                                              for _, t in users], pa.list_(pa.float64()))})
    tbl = tbl.slice(min(start, tbl.num_rows))             # offsets that do not start at 0
    kept = users[min(start, len(users)):]
    x = utpm_train.inputs(tbl.to_batches()[0] if tbl.num_rows else tbl, ["age"], ["long"], length)

    def strings(a):
        return tf.convert_to_tensor(a).numpy().tolist()

    assert x["u_age"].shape == (len(kept), 1) and x["long_tags"].shape == (len(kept), length)
    assert strings(x["u_age"]) == [[(u or "").encode()] for u, _ in kept]
    assert strings(x["long_tags"]) == [[(v or "").encode() for v in ((t or []) + [""] * length)[:length]]
                                       for _, t in kept]
    assert x["long_weights"].tolist() == [([float(k) for k in range(len(t or []))] + [0.0] * length)[:length]
                                          for _, t in kept]


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 12), max_size=8), size=st.integers(1, 5))
def test_chunks_regroup_the_rows_in_order_into_chunks_of_one_size(sizes, size):
    bounds = np.cumsum([0, *sizes])
    batches = [pa.record_batch({"i": pa.array(np.arange(a, b), pa.int64())}) for a, b in itertools.pairwise(bounds)]
    got = list(utpm_train.chunks(batches, size))
    assert [c.num_rows for c in got] == [size] * (bounds[-1] // size) + ([bounds[-1] % size] if bounds[-1] % size else [])
    assert [v for c in got for v in c.column("i").to_pylist()] == list(range(bounds[-1]))


class _ScoresByAge:
    """A model whose scores are row ``int(u_age)`` of ``table``, whatever else the inputs hold."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def predict_on_batch(self, x):
        self.calls.append(len(x["u_age"]))
        return {"scores": self.table[[int(v) for v in x["u_age"][:, 0]]]}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), t=st.integers(1, 8), n=st.integers(0, 6), m=st.integers(1, 10),
       prior=st.booleans(), rows=st.sampled_from([None, 8]))
def test_score_users_writes_each_users_top_tags_by_score_then_column(data, t, n, m, prior, rows):
    table = np.array(data.draw(st.lists(st.lists(st.sampled_from([-1.0, 0.0, 0.25, 3.0]), min_size=t, max_size=t),
                                        min_size=n, max_size=n)), np.float32).reshape(n, t)
    tags = [f"t{j}" for j in range(t)]
    p = [(j + 1) / t for j in range(t)]
    meta = {"tags": tags, "user_features": ["age"], "fields": ["long"], "field_length": 2,
            **({"tag_prior": p} if prior else {})}
    batch = pa.record_batch({"user_id": [f"u{i}" for i in range(n)], "u_age": [str(i) for i in range(n)],
                             "long_tags": pa.array([["t0"]] * n, pa.list_(pa.string())),
                             "long_weights": pa.array([[1.0]] * n, pa.list_(pa.float64()))})
    model = _ScoresByAge(table)
    got = utpm_train.score_users(model, meta, batch, m, 0.5, rows=rows).to_pylist()
    want = []
    for i, r in enumerate(table.astype(float).tolist()):
        log_z = max(r) + math.log(math.fsum(math.exp(v - max(r)) for v in r))
        for rank, j in enumerate(_ranked(r, m), 1):
            want.append({"user_id": f"u{i}", "rank": rank, "tag": tags[j], "score": r[j],
                         "interest": r[j] - log_z - 0.5 * math.log(p[j]) if prior else None})
    assert [{k: v for k, v in g.items() if k != "interest"} for g in got] == \
        [{k: v for k, v in w.items() if k != "interest"} for w in want]
    assert [g["interest"] is None for g in got] == [w["interest"] is None for w in want]
    if prior:
        np.testing.assert_allclose([g["interest"] for g in got], [w["interest"] for w in want], rtol=1e-12, atol=1e-12)
    assert model.calls == ([] if n == 0 else [max(n, rows or 0)])    # padded to ``rows`` users
