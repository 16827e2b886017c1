"""Training triples from Parquet, streamed in Arrow record batches: memory stays bounded by
the batch size whatever the window (no pandas frame of the whole window)."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from jobs.features import FeatureSpec

LABELS = ("click", "dwell_sec")


def dataset(paths: list[str | Path]) -> pds.Dataset:
    files = [str(f) for p in paths for f in sorted(Path(p).glob("*.parquet"))]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {', '.join(map(str, paths))}")
    return pds.dataset(files, format="parquet")


def to_inputs(batch: pa.RecordBatch | pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Model inputs: strings as object arrays, numerics as float32, each of shape (n, 1)."""
    out = {}
    for c in spec.categorical:
        col = batch.column(c)
        out[c] = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=object).reshape(-1, 1)
    for c in spec.numeric:
        out[c] = batch.column(c).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    return out


def to_targets(batch: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
    click = batch.column("click").to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    dwell = batch.column("dwell_sec").fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)
    dwell = np.log1p(np.maximum(dwell, 0.0)).reshape(-1, 1) * click
    return {"click": click, "dwell": dwell}


def batches(ds: pds.Dataset, spec: FeatureSpec, batch_size: int, with_ids: bool = False,
            read_rows: int = 65536) -> Iterator[tuple]:
    """(inputs, targets) per batch of at most ``batch_size`` rows; with ``with_ids`` also the
    user_id column (for per-user metrics). Arrow is read and converted ``read_rows`` at a
    time (fewer, larger conversions), then sliced without copying."""
    columns = list(spec.columns) + list(LABELS) + (["user_id"] if with_ids else [])
    for chunk in ds.to_batches(columns=columns, batch_size=max(read_rows, batch_size)):
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
