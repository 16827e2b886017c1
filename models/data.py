"""Training triples from Parquet, streamed in Arrow record batches: memory stays bounded by
the batch size whatever the window (no pandas frame of the whole window).

Targets: ``click`` (0/1), ``dwell`` (log1p seconds) and ``dwell_mask``, which is 1 only on
clicked rows whose dwell is known and finite. The dwell loss sees only those rows; every
other row's dwell target is 0, so a null, NaN or infinite dwell cannot reach a loss.

Shuffling (training only): the Parquet files in a random order, and the rows of each read
chunk (``read_rows``, 64k by default) permuted before they are cut into batches, with a new
order every epoch. A buffer of whole batches would leave the rows inside each batch in file
order, i.e. grouped by user.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from schemas.features import FeatureSpec

LABELS = ("click", "dwell_sec")


def to_inputs(batch: pa.RecordBatch | pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Model inputs: strings as object arrays, numerics as float32, each of shape (n, 1)."""
    out = {}
    for c in spec.categorical:
        col = batch.column(c)
        out[c] = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=object).reshape(-1, 1)
    for c in spec.numeric:
        out[c] = batch.column(c).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    return out


TARGETS = ("click", "dwell", "dwell_mask")


def to_targets(batch: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
    """click, log1p(dwell seconds) and the dwell mask (module docstring), each (n, 1) float32."""
    click = batch.column("click").fill_null(0).to_numpy(zero_copy_only=False).astype(np.float32)
    dwell = batch.column("dwell_sec").to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    known = (click > 0) & np.isfinite(dwell)
    dwell_log = np.where(known, np.log1p(np.maximum(np.where(known, dwell, 0.0), 0.0)), 0.0)
    return {"click": click.reshape(-1, 1), "dwell": dwell_log.astype(np.float32).reshape(-1, 1),
            "dwell_mask": known.astype(np.float32).reshape(-1, 1)}


def _chunks(ds: pds.Dataset, columns: list[str], read_rows: int, rng: np.random.Generator | None):
    if rng is None:
        yield from ds.to_batches(columns=columns, batch_size=read_rows)
        return
    fragments = list(ds.get_fragments())
    for i in rng.permutation(len(fragments)):
        for chunk in fragments[i].to_batches(columns=columns, batch_size=read_rows):
            yield chunk.take(pa.array(rng.permutation(chunk.num_rows)))


def batches(ds: pds.Dataset, spec: FeatureSpec, batch_size: int, with_ids: bool = False,
            read_rows: int = 65536, shuffle_seed: int | None = None) -> Iterator[tuple]:
    """(inputs, targets) per batch of at most ``batch_size`` rows; with ``with_ids`` also the
    user_id column (for per-user metrics). Arrow is read and converted ``read_rows`` at a
    time (fewer, larger conversions), then sliced without copying. With ``shuffle_seed``,
    files and rows come in a random order (module docstring); without, in file order."""
    columns = list(spec.columns) + list(LABELS) + (["user_id"] if with_ids else [])
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
    for chunk in _chunks(ds, columns, max(read_rows, batch_size), rng):
        if chunk.num_rows == 0:
            continue
        inputs, targets = to_inputs(chunk, spec), to_targets(chunk)
        ids = (np.asarray(chunk.column("user_id").to_numpy(zero_copy_only=False), dtype=object)
               if with_ids else None)
        for start in range(0, chunk.num_rows, batch_size):
            sl = slice(start, start + batch_size)
            item = ({k: v[sl] for k, v in inputs.items()}, {k: v[sl] for k, v in targets.items()})
            if with_ids:
                item += (ids[sl],)
            yield item


@dataclass
class Statistics:
    """What the model needs from its training data: vocabularies and normalisation."""

    rows: int = 0
    clicks: int = 0
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    mean: list[float] = field(default_factory=list)
    variance: list[float] = field(default_factory=list)


def statistics(ds: pds.Dataset, spec: FeatureSpec, batch_size: int = 65536, min_count: int = 1) -> Statistics:
    """One streaming pass: category counts and the mean / variance of log1p(numeric)."""
    counts = {c: collections.Counter() for c in spec.categorical}
    n = 0
    clicks = 0
    s = np.zeros(len(spec.numeric))
    ss = np.zeros(len(spec.numeric))
    for batch in ds.to_batches(columns=list(spec.columns) + ["click"], batch_size=batch_size):
        n += batch.num_rows
        clicks += int(pc.sum(batch.column("click")).as_py() or 0)
        for c in spec.categorical:
            vc = pc.value_counts(batch.column(c).fill_null(""))
            for item in vc.to_pylist():
                counts[c][item["values"]] += item["counts"]
        for i, c in enumerate(spec.numeric):
            x = np.log1p(np.maximum(batch.column(c).fill_null(0.0).to_numpy(zero_copy_only=False), 0.0))
            s[i] += x.sum()
            ss[i] += np.square(x).sum()
    if n == 0:
        raise ValueError("no training rows")
    mean = s / n
    var = np.maximum(ss / n - mean ** 2, 1e-12)
    vocab = {c: sorted(v for v, k in counts[c].items() if k >= min_count) for c in spec.categorical}
    return Statistics(rows=n, clicks=clicks, vocabularies=vocab, mean=[float(x) for x in mean],
                      variance=[float(x) for x in var])


def steps(rows: int, batch_size: int) -> int:
    return max(1, math.ceil(rows / batch_size))
