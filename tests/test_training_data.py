"""The training feed (models/data.py) and model versions (models/train.py), without Spark:
targets masked by a known, finite dwell; rows shuffled within batches, differently each
epoch, none lost; a retried day's training keeps one version folder."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import data, tables
from schemas.config import load_config
from schemas.features import FeatureSpec

SPEC = FeatureSpec(categorical=("tag",), numeric=("x",))


def test_null_nan_and_infinite_dwell_never_reach_the_dwell_target():
    batch = pa.table({"click": [1, 1, 1, 1, 0, 1],
                      "dwell_sec": [3.0, None, float("nan"), float("inf"), float("nan"), -2.0]})
    t = data.to_targets(batch)
    np.testing.assert_array_equal(t["dwell_mask"].ravel(), [1, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(t["dwell"].ravel(), [np.log1p(3.0), 0, 0, 0, 0, 0])  # negative dwell -> 0 s
    assert all(np.isfinite(v).all() for v in t.values())
    # the masked loss of a batch with such rows is finite (it was NaN when NaN x 0 reached it)
    layers = pytest.importorskip("models.layers")
    loss = layers.masked_mse(t["dwell"], np.ones_like(t["dwell"]), t["dwell_mask"])
    assert np.isfinite(float(loss))


def _feed(folder, files=3, rows=300):
    folder.mkdir()
    ids = np.arange(files * rows)
    for f in range(files):
        part = ids[f * rows:(f + 1) * rows]
        pq.write_table(pa.table({"tag": [f"t{i}" for i in part], "x": part.astype("float64"),
                                 "click": (part % 2).astype("int32"), "dwell_sec": part.astype("float64")}),
                       folder / f"part-{f:05d}.parquet")
    return tables.dataset([tables.parquet_folder(folder)]), ids


def _order(ds, seed, batch_size=50):
    return [b[0]["x"].ravel().astype(int) for b in data.batches(ds, SPEC, batch_size, read_rows=1000,
                                                                     shuffle_seed=seed)]


def test_shuffled_batches_mix_rows_from_across_the_files_and_lose_none(tmp_path):
    ds, ids = _feed(tmp_path / "triples")
    batches = _order(ds, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), ids)  # every row once
    first = batches[0]
    # In file order a batch is a run of 50 consecutive rows; shuffled, its rows come from
    # all over their file (300 rows).
    assert np.ptp(first) > 150 and not np.all(np.diff(first) == 1)
    # Each epoch (seed) gives another order; the same seed the same order.
    assert not np.array_equal(np.concatenate(batches), np.concatenate(_order(ds, seed=2)))
    np.testing.assert_array_equal(np.concatenate(batches), np.concatenate(_order(ds, seed=1)))
    # Without a seed (validation, scoring) the file order is kept.
    plain = np.concatenate([b[0]["x"].ravel() for b in data.batches(ds, SPEC, 50)]).astype(int)
    np.testing.assert_array_equal(plain, ids)


def test_the_training_feed_gives_a_new_row_order_each_epoch(tmp_path):
    pytest.importorskip("tensorflow")
    from models.train import tf_dataset

    ds, ids = _feed(tmp_path / "triples", files=2, rows=200)
    feed = tf_dataset(ds, SPEC, 64, shuffle_seed=5)
    epochs = [np.concatenate([x["x"].numpy().ravel() for x, _ in feed]).astype(int) for _ in range(2)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), ids)
    assert not np.array_equal(epochs[0], epochs[1])


def test_model_version_is_a_function_of_settings_and_data(tmp_path):
    from models.train import Window, model_version
    from schemas.features import feature_spec

    config = load_config(overrides={"storage": {"warehouse": str(tmp_path / "wh")}})
    part = tmp_path / "wh" / "training_triples" / "dt=2026-11-02"
    part.mkdir(parents=True)
    (part / "part-0.parquet").write_bytes(b"x" * 10)
    def window():
        found = tables.parquet_folder(part)
        return Window("2026-11-02", {"2026-11-01": found, "2026-11-02": found})

    spec = feature_spec(config)
    v = model_version(config, spec, window())
    assert v.startswith("2026-11-02-uncertainty-") and v == model_version(config, spec, window())
    other = load_config(overrides={"storage": {"warehouse": str(tmp_path / "wh")}, "model": {"epochs": 3}})
    assert model_version(other, spec, window()) != v
    (part / "part-0.parquet").write_bytes(b"x" * 11)  # the data changed
    assert model_version(config, spec, window()) != v


def test_writing_a_version_again_replaces_it_in_one_folder(tmp_path):
    keras = pytest.importorskip("keras")
    from models import registry
    from models.train import write_version

    wh = str(tmp_path / "wh")
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    write_version(wh, "2026-11-02-equal-abc", net, {"metadata.json": {"attempt": 1}}, plot=None)
    write_version(wh, "2026-11-02-equal-abc", net, {"metadata.json": {"attempt": 2}}, plot=None)
    root = registry.models_dir(wh)
    assert sorted(p.name for p in root.iterdir()) == ["2026-11-02-equal-abc"]
    assert (root / "2026-11-02-equal-abc" / "metadata.json").read_text().count('"attempt": 2') == 1


def test_skip_reason_names_the_missing_validation_day(tmp_path):
    from models.train import skip_reason

    config = load_config(overrides={"storage": {"warehouse": str(tmp_path / "wh")}})
    assert "no training_triples for 2026-11-02" in skip_reason(config, dt.date(2026, 11, 2))
