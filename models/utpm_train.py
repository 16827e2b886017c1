"""Training and scoring the user-tag profile model (models/utpm.py) for day D. The step
``tagrecall tag-model --date D`` (jobs/tag_model.py) writes the examples, calls
``train_day`` and scores the users with ``score_users``; nothing here imports Spark or jobs/.

The window is tag_model.window_days days of ``tag_examples`` ending at D: the days before D
train, D validates (early stopping on the validation loss, the best epoch's weights kept).
The window is read into memory (at most tag_model.max_train_rows rows, a seeded uniform
sample beyond that): a user-tag model's examples are one row per impression with a few
short lists, far smaller than the multi-task model's triples.

``models/<version>/``: ``model.keras`` (raw fields -> scores over the vocabulary; loads with
safe_mode on), ``metadata.json`` (the vocabulary in score order, the fields, the loss,
the training days, validation figures), ``history.json``. The version name is
``<D>-utpm-<loss>-<fingerprint>`` (settings and training files): a retried day rewrites
the same version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models import registry, tables
from models.train import Window, write_version
from schemas.config import Config, TagModelConfig

log = logging.getLogger(__name__)

TABLE = "tag_examples"
SCORED_COLUMNS = ("user_id", "rank", "tag", "score", "interest")
# Settings of where the scores are computed, not of the model: they leave its version alone.
NOT_IN_VERSION = ("driver_scoring_max_users",)


def window(config: Config, date: dt.date) -> Window:
    days = [date - dt.timedelta(days=k) for k in range(config.tag_model.window_days - 1, -1, -1)]
    return Window(date.isoformat(), tables.partitions(config, TABLE, days))


def skip_reason(config: Config, date: dt.date) -> str | None:
    """Why the model of ``date`` cannot be trained yet (the first days of data), or None."""
    w = window(config, date)
    if w.day not in w.parts:
        return f"no {TABLE} for {w.day} (the validation day): its examples need {date - dt.timedelta(days=1)}'s tables"
    if not w.train_days:
        return (f"no {TABLE} in the {config.tag_model.window_days - 1} days before {w.day} "
                f"(tag_model.window_days={config.tag_model.window_days})")
    return None


# ---- Arrow -> model inputs: the one conversion, for training and scoring ------------------

def _list_array(col):
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _cells(arr: pa.ListArray, length: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(cell, keep, values) of a list column: ``values`` its items in order, item i going to
    cell (row, position) ``cell[i]`` = row * length + position, kept where ``keep`` (the
    first ``length`` items of each list)."""
    n = len(arr)
    offsets = arr.offsets.to_numpy()
    sizes = np.diff(offsets)
    rows = np.repeat(np.arange(n), sizes)
    pos = np.arange(len(rows)) - np.repeat(offsets[:-1] - offsets[0], sizes)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0]) if n else arr.values.slice(0, 0)
    return rows * length + pos, pos < length, values


def pad(col, length: int, fill, dtype) -> np.ndarray:
    """A list column -> (rows, length) array, each list cut or padded with ``fill``."""
    arr = _list_array(col)
    out = np.full((len(arr), length), fill, dtype=dtype)
    cell, keep, values = _cells(arr, length)
    if len(values):
        out.reshape(-1)[cell[keep]] = values.to_numpy(zero_copy_only=False)[keep]
    return out


# Strings up to this many UTF-8 bytes go to the network as fixed-width numpy bytes, built from
# Arrow's buffers by whole-array operations; a longer one (the array's width is its longest
# value) makes its column Python strings instead. TensorFlow makes the same string tensor of both.
# At 32 a cell never takes more memory than a Python string would (some 57 bytes and more
# with its pointer), whatever the lengths of the others.
FIXED_WIDTH_MAX = 32


def _as_bytes(values: pa.Array) -> np.ndarray:
    """A string array -> (n,) numpy bytes ("S<width>"), or Python strings (object) when a value
    is longer than FIXED_WIDTH_MAX or ends in a NUL byte (numpy drops trailing NULs). Nulls
    are empty strings."""
    values = _list_array(values)
    if values.type != pa.string():
        values = values.cast(pa.string())
    if values.null_count:
        values = values.fill_null("")
    n = len(values)
    if n == 0:
        return np.zeros(0, "S1")
    offsets = np.frombuffer(values.buffers()[1], np.int32, n + 1, values.offset * 4)
    sizes = np.diff(offsets)
    width = max(int(sizes.max()), 1)
    used = int(offsets[-1] - offsets[0])
    data = np.frombuffer(values.buffers()[2], np.uint8, used, int(offsets[0])) if used else np.zeros(0, np.uint8)
    if width > FIXED_WIDTH_MAX or (used and (data[offsets[1:][sizes > 0] - offsets[0] - 1] == 0).any()):
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    out = np.zeros((n, width), np.uint8)
    out[np.arange(width) < sizes[:, None]] = data   # each value's bytes, left-aligned, NUL-padded
    return out.view(f"S{width}").reshape(n)


def pad_strings(col, length: int) -> np.ndarray:
    """A list<string> column -> (rows, length) strings, each list cut or padded with "" (as
    ``_as_bytes``: numpy bytes, or Python strings)."""
    arr = _list_array(col)
    cell, keep, values = _cells(arr, length)
    items = _as_bytes(values)
    out = np.zeros(len(arr) * length, items.dtype) if items.dtype != object else \
        np.full(len(arr) * length, "", dtype=object)
    out[cell[keep]] = items[keep]
    return out.reshape(len(arr), length)


def inputs(batch: pa.RecordBatch | pa.Table, user_features: list[str], fields: list[str],
           length: int) -> dict[str, np.ndarray]:
    """The network's inputs from user_fields columns: u_<k> (n, 1) strings ("" for null),
    <f>_tags (n, L) strings ("" pads) and <f>_weights (n, L) float32. The strings are
    numpy bytes (UTF-8) converted from Arrow's buffers without a Python object each
    (``_as_bytes``): the string tensors are those of Python strings."""
    out = {f"u_{k}": _as_bytes(batch.column(f"u_{k}")).reshape(-1, 1) for k in user_features}
    for f in fields:
        out[f"{f}_tags"] = pad_strings(batch.column(f"{f}_tags"), length)
        out[f"{f}_weights"] = pad(batch.column(f"{f}_weights"), length, 0.0, np.float32)
    return out


def labels(batch: pa.RecordBatch | pa.Table, tag_ids: dict[str, int], length: int) -> dict[str, np.ndarray]:
    """click (n,), article_ids (n, L) int32 and article_weights (n, L), 0 for padding and for
    tags outside the vocabulary."""
    arr = _list_array(batch.column("article_tags"))
    items = arr.values   # every list's items, in the offsets' coordinates (a slice included)
    # Each tag's id by one hash lookup in Arrow: its position in the vocabulary, then its id.
    position = pc.index_in(items.field("tag"), value_set=pa.array(list(tag_ids), pa.string()))
    id_of = np.fromiter(tag_ids.values(), np.int32, len(tag_ids))
    pos = position.fill_null(-1).to_numpy(zero_copy_only=False)
    item_ids = np.full(len(pos), -1, np.int32)
    item_ids[pos >= 0] = id_of[pos[pos >= 0]]
    ids = pad(pa.ListArray.from_arrays(arr.offsets, pa.array(item_ids)), length, -1, np.int32)
    w = pad(pa.ListArray.from_arrays(arr.offsets, items.field("weight")), length, 0.0, np.float32)
    w = np.where(ids >= 0, w, 0.0).astype(np.float32)
    click = batch.column("click").fill_null(0).to_numpy(zero_copy_only=False).astype(np.float32)
    return {"click": click, "article_ids": np.maximum(ids, 0), "article_weights": w}


def vocabularies(tbl: pa.Table, user_features: list[str], fields: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(user feature vocabularies, the tag vocabulary): every value seen in ``tbl``, sorted."""
    def distinct(values) -> set:   # Arrow's hash table first: a few Python strings, not one per item
        return set(pc.unique(values).to_pylist())

    vocab = {f"u_{k}": sorted(distinct(tbl.column(f"u_{k}").fill_null("")) - {""}) for k in user_features}
    tags = distinct(_list_array(tbl.column("article_tags")).flatten().field("tag"))
    for f in fields:
        tags |= distinct(_list_array(tbl.column(f"{f}_tags")).flatten())
    return vocab, sorted(tags - {""})


# ---- training ----------------------------------------------------------------------------

def read(parts: list[tables.Partition], limit: int | None = None, seed: int = 0) -> pa.Table:
    """The rows of ``parts``, or a seeded uniform sample of ``limit`` of them, in the files'
    order; a sample is gathered batch by batch, never holding every row at once."""
    data = tables.dataset(parts)
    rows = data.count_rows()
    if limit is None or rows <= limit:
        return data.to_table()
    keep = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return data.take(pa.array(keep))


def model_version(config: Config, w: Window) -> str:
    files = [(d, name, size) for d, p in w.parts.items() for name, size in p.fingerprint]
    settings = {k: v for k, v in config.to_dict()["tag_model"].items() if k not in NOT_IN_VERSION}
    payload = json.dumps({"tag_model": settings,
                          "user_features": config.features.user_features, "files": files},
                         sort_keys=True, default=str)
    return f"{w.day}-utpm-{config.tag_model.loss}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def rows_in_loss(y: dict, loss: str) -> np.ndarray | None:
    """Which rows can enter ``loss`` (models/utpm.py), or None for every row. The softmax loss
    is the mean over a batch's clicked impressions that name a tag of the vocabulary: the
    others add nothing to it and do not count in its denominator, and the network treats
    each row on its own (no batch statistics), so leaving them out of each batch after it
    is drawn changes neither the loss nor the update. On the demo's feed 11% of the
    impressions are clicked."""
    if loss != "softmax":
        return None
    return (y["click"] > 0) & (y["article_weights"] > 0).any(axis=1)


@contextlib.contextmanager
def _tf_data(x: dict, y: dict, batch_size: int, seed: int | None, keep: np.ndarray | None = None):
    """Batches of (x, y), a dataset for the ``with`` block; with ``seed``, a new seeded row
    order each epoch; with ``keep``, each batch is drawn from every row, then only its rows where ``keep`` holds are gathered
    (``rows_in_loss``), so the batches and their order are those of all rows. The row
    indices are shuffled, not the rows, and each batch is gathered at once: shuffling every
    input and label array row by row (17 of them by default) took as long as the training
    steps themselves on 2 cores. The order is the one a shuffle of the rows gives (it
    depends on the seed and the row count only). Each batch is gathered from the numpy
    arrays themselves: tensors of every row would hold each string cell in 24 bytes or more
    beside the arrays' few (some 10 GB for two days of 2M examples). TensorFlow keeps a
    numpy_function's Python function for the life of the process, so the arrays are let go
    of when the block ends: the dataset is not to be used after it."""
    import tensorflow as tf

    rows = len(y["click"])
    arrays = tf.nest.flatten((x, y))
    dtypes = [tf.string if a.dtype.kind in "SUO" else tf.as_dtype(a.dtype) for a in arrays]
    shapes = [a.shape[1:] for a in arrays]

    def gather(i: np.ndarray) -> list[np.ndarray]:
        return [a[i] for a in arrays]

    def batch(i):
        out = tf.numpy_function(gather, [i], dtypes, stateful=False)
        for tensor, shape in zip(out, shapes, strict=True):
            tensor.set_shape((None, *shape))
        return tf.nest.pack_sequence_as((x, y), out)

    order = tf.data.Dataset.range(rows)
    if seed is not None:
        order = order.shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)
    if keep is not None:
        kept = tf.constant(np.asarray(keep, dtype=bool))
        order = order.map(lambda i: tf.boolean_mask(i, tf.gather(kept, i)))
    try:
        yield order.map(batch).prefetch(2)
    finally:
        arrays.clear()


@dataclasses.dataclass
class Examples:
    """A window's examples as the network's inputs and labels, and what else fitting needs of
    the Arrow tables they come from (which can then be let go: some 2 GB a day of 2M examples)."""

    vocab: dict[str, list[str]]
    tags: list[str]
    x_tr: dict[str, np.ndarray]
    y_tr: dict[str, np.ndarray]
    x_va: dict[str, np.ndarray]
    y_va: dict[str, np.ndarray]
    train_rows: int
    val_rows: int
    val_users: pa.Table   # the validation rows' user_id (the tag prior's users)


def examples(config: Config, train: pa.Table, val: pa.Table, label: str) -> Examples:
    """The training (``train``) and validation (``val``) tables as the network's inputs, with
    the vocabularies of ``train``."""
    cfg, feats = config.tag_model, list(config.features.user_features)
    vocab, tags = vocabularies(train, feats, cfg.input_fields)
    if not tags:
        raise ValueError(f"{label}: the training examples name no tag")
    tag_ids = {t: i for i, t in enumerate(tags)}
    return Examples(vocab, tags,
                    inputs(train, feats, cfg.input_fields, cfg.field_length), labels(train, tag_ids, cfg.article_tags),
                    inputs(val, feats, cfg.input_fields, cfg.field_length), labels(val, tag_ids, cfg.article_tags),
                    train.num_rows, val.num_rows, val.select(["user_id"]))


def fit(config: Config, train: pa.Table, val: pa.Table, label: str):
    """(network, metadata, history): the model fitted on ``train`` with early stopping on ``val``."""
    return fit_examples(config, examples(config, train, val, label), label)


def fit_examples(config: Config, ex: Examples, label: str):
    """``fit`` of examples already converted (train_day converts the tables it reads, then
    lets them go before fitting)."""
    import keras

    from models.multitask import EpochProgress
    from models.utpm import UTPMTrainer, build_network

    cfg, feats = config.tag_model, list(config.features.user_features)
    vocab, tags, x_tr, y_tr, x_va, y_va = ex.vocab, ex.tags, ex.x_tr, ex.y_tr, ex.x_va, ex.y_va
    log.info("%s: %s training impressions, %s validating, loss %s", label, f"{ex.train_rows:,}",
             f"{ex.val_rows:,}", cfg.loss)
    keras.utils.set_random_seed(cfg.seed)
    user_model, network = build_network(feats, cfg.input_fields, vocab, tags, cfg.field_length, cfg.embedding_dim,
                                        cfg.heads, cfg.units, cfg.user_dim, cfg.tower, cfg.echo)
    sampled = cfg.sampled_negatives if cfg.loss == "softmax" and len(tags) > cfg.full_softmax_max_tags else 0
    trainer = UTPMTrainer(user_model, network, cfg.loss, sampled_negatives=min(sampled, len(tags)), seed=cfg.seed)
    trainer.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate))
    steps = max(1, -(-ex.train_rows // cfg.batch_size))
    callbacks = [EpochProgress(label, steps),
                 keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience,
                                               restore_best_weights=True)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
        with (_tf_data(x_tr, y_tr, cfg.batch_size, cfg.seed, rows_in_loss(y_tr, cfg.loss)) as batches,
              _tf_data(x_va, y_va, cfg.batch_size, None, rows_in_loss(y_va, cfg.loss)) as validation):
            fitted = trainer.fit(batches, validation_data=validation, epochs=cfg.epochs, callbacks=callbacks,
                                 verbose=0)
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    for epoch, (loss, val_loss) in enumerate(zip(history["loss"], history["val_loss"], strict=True), 1):
        log.info("%s epoch %d: loss %.4f | validation %.4f", label, epoch, loss, val_loss)
    metadata = {"kind": "utpm", "tower": cfg.tower, "echo": cfg.echo, "loss": cfg.loss, "tags": tags, "user_features": feats, "fields": cfg.input_fields,
                "field_length": cfg.field_length, "sampled_negatives": trainer.sampled_negatives,
                "tag_prior": tag_prior(network, x_va, ex.val_users).tolist(),
                "train_rows": ex.train_rows, "validation_rows": ex.val_rows,
                "validation_loss": min(history["val_loss"]) if history.get("val_loss") else None}
    return network, metadata, history


def train_day(config: Config, date: dt.date, version: str | None = None) -> dict:
    """Fit and save the tag model of ``date``; returns the result (what the run report holds).
    Raises ValueError when the day cannot be trained: check ``skip_reason`` first."""
    started = time.monotonic()
    reason = skip_reason(config, date)
    if reason:
        raise ValueError(f"tag-model {date}: {reason}")
    cfg, w = config.tag_model, window(config, date)
    log.info("tag-model %s: training on %s, validating on %s", w.day, ", ".join(w.train_days), w.day)
    label = f"tag-model {w.day}"
    # No name holds the tables: their memory returns once their inputs are built.
    ex = examples(config, read([w.parts[d] for d in w.train_days], cfg.max_train_rows, cfg.seed),
                  read([w.parts[w.day]], cfg.max_train_rows, cfg.seed), label)
    network, metadata, history = fit_examples(config, ex, label)
    version = version or model_version(config, w)
    metadata |= {"version": version, "date": w.day, "train_days": w.train_days, "validation_day": w.day}
    folder = write_version(config.storage.warehouse, version, network,
                           {registry.METADATA_FILE: metadata, "history.json": history}, plot=None)
    return {"date": w.day, "version": version, "loss": cfg.loss, "tags": len(metadata["tags"]),
            "train_rows": metadata["train_rows"], "train_days": w.train_days,
            "validation_loss": metadata["validation_loss"], "epochs": len(history.get("loss", [])),
            "history": history, "seconds": round(time.monotonic() - started, 3), "model_dir": str(folder)}


# ---- scoring -----------------------------------------------------------------------------

def log_softmax(scores: np.ndarray) -> np.ndarray:
    top = scores.max(axis=1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))


def predict_scores(model, x: dict[str, np.ndarray], batch: int = 4096) -> np.ndarray:
    """(rows, T) float64 scores of the inputs ``x``, predicted ``batch`` rows at a time."""
    n = len(next(iter(x.values())))
    parts = [np.asarray(model.predict_on_batch({k: v[i:i + batch] for k, v in x.items()})["scores"], "float64")
             for i in range(0, n, batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def tag_prior(model, x: dict[str, np.ndarray], rows: pa.Table) -> np.ndarray:
    """p(t | the average user): softmax(score) averaged over the distinct users of ``rows``
    (the validation day's examples, their fields as of the day before), each user once."""
    users = rows.column("user_id").to_numpy(zero_copy_only=False)
    _, first = np.unique(users, return_index=True)
    scores = predict_scores(model, {k: v[first] for k, v in x.items()})
    return np.exp(log_softmax(scores)).mean(axis=0)


def interest(scores: np.ndarray, prior: np.ndarray, popularity_weight: float = 1.0) -> np.ndarray:
    """log p(t | u) - w log p(t | the average user), p(. | u) = softmax(scores), w =
    ``popularity_weight``. The scores rank what the user will click tomorrow, popular tags
    first (w = 0); w = 1 is the user's lift on t over everyone (pointwise mutual
    information), which also lifts rare tags on little evidence; in between, the interest
    profile: what the user clicks, discounted by how much everyone does."""
    return log_softmax(scores) - popularity_weight * np.log(np.maximum(prior, 1e-300))[None, :]


def top_tags(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of each row's ``m`` best columns, best first (ties by column; NaN
    last, as numpy sorts). Each row's m-th best value is found by a partition; the columns
    better than it and the first of those equal to it (by column) fill the m, and only
    they are sorted: the order of a stable sort of the whole row by -score."""
    n, t = scores.shape
    m = min(m, t)
    if n == 0 or m == 0:
        idx = np.zeros((n, m), np.intp)
        return idx, np.take_along_axis(scores, idx, axis=1)
    neg = -scores
    kth = np.partition(neg, m - 1, axis=1)[:, m - 1:m]
    better, tied = neg < kth, neg == kth
    nan = np.isnan(kth)
    if nan.any():   # fewer than m numbers in a row: all of them, then its NaNs by column
        missing = np.isnan(neg)
        better |= nan & ~missing
        tied |= nan & missing
    need = m - better.sum(axis=1, keepdims=True)
    chosen = better | tied
    over = np.flatnonzero(tied.sum(axis=1) > need[:, 0])   # rows with more ties than places left
    if len(over):
        chosen[over] = better[over] | (tied[over] & (np.cumsum(tied[over], axis=1) <= need[over]))
    columns = (np.flatnonzero(chosen) % t).reshape(n, m)                # ascending in each row
    order = np.argsort(np.take_along_axis(neg, columns, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(columns, order, axis=1)
    return idx, np.take_along_axis(scores, idx, axis=1)


def interest_at(scores: np.ndarray, idx: np.ndarray, log_prior: np.ndarray,
                popularity_weight: float = 1.0) -> np.ndarray:
    """``interest(scores, prior, popularity_weight)`` at the columns ``idx`` of each row, the
    same float64 numbers (log_prior = log(max(prior, 1e-300))): the log-normaliser is taken
    once per row, the rest only at ``idx``."""
    top = scores.max(axis=1, keepdims=True).astype(np.float64)
    shifted = np.subtract(scores, top, dtype=np.float64)
    log_z = np.log(np.exp(shifted, out=shifted).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(scores, idx, axis=1).astype(np.float64)
    return picked - top - log_z - popularity_weight * log_prior[idx]


@functools.lru_cache(maxsize=4)
def _vocabulary(tags: tuple[str, ...]) -> pa.Array:
    return pa.array(tags, pa.string())


@functools.lru_cache(maxsize=4)
def _log_prior(prior: tuple[float, ...]) -> np.ndarray:
    out = np.log(np.maximum(np.asarray(prior, dtype=np.float64), 1e-300))
    out.flags.writeable = False
    return out


def chunks(batches, size: int):
    """RecordBatches of ``size`` rows, the last one fewer, from ``batches`` of any sizes in
    order (a chunk may join the end of one batch and the start of the next)."""
    held, count = [], 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            take = min(size - count, batch.num_rows - start)
            held.append(batch.slice(start, take))
            count, start = count + take, start + take
            if count == size:
                yield held[0] if len(held) == 1 else pa.concat_batches(held)
                held, count = [], 0
    if count:
        yield held[0] if len(held) == 1 else pa.concat_batches(held)


def _padded(x: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """``x`` with its last row repeated up to ``rows`` rows."""
    n = len(next(iter(x.values())))
    if n >= rows:
        return x
    return {k: np.concatenate([v, np.repeat(v[-1:], rows - n, axis=0)]) for k, v in x.items()}


def score_users(model, metadata: dict, batch: pa.RecordBatch, m: int,
                popularity_weight: float = TagModelConfig.interest_popularity_weight,
                rows: int | None = None) -> pa.RecordBatch:
    """user_fields rows -> SCORED_COLUMNS: each user's top ``m`` tags by score(u, t), with
    their interest at ``popularity_weight`` (null when the model's metadata holds no
    tag_prior). With ``rows``, a batch of fewer users is padded to ``rows`` for the network
    (the padding's scores dropped): every call of one shape, traced once."""
    tags = metadata["tags"]
    n = batch.num_rows
    k = min(m, len(tags))
    if n == 0:
        scores = np.zeros((0, len(tags)), np.float32)
    else:
        x = inputs(batch, metadata["user_features"], metadata["fields"], metadata["field_length"])
        scores = np.asarray(model.predict_on_batch(_padded(x, rows) if rows else x)["scores"])[:n]
    idx, top = top_tags(scores, m)
    if metadata.get("tag_prior") is not None:
        lift = pa.array(interest_at(scores, idx, _log_prior(tuple(metadata["tag_prior"])), popularity_weight).ravel())
    else:
        lift = pa.nulls(n * k, pa.float64())
    users = _list_array(batch.column("user_id"))
    if users.type != pa.string():
        users = users.cast(pa.string())
    return pa.RecordBatch.from_arrays(
        [users.take(pa.array(np.repeat(np.arange(n), k))), pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
         _vocabulary(tuple(tags)).take(pa.array(idx.ravel())), pa.array(top.ravel().astype(np.float64)), lift],
        names=list(SCORED_COLUMNS))
