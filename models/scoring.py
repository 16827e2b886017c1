"""Scoring rows with a trained tag model: the one conversion from model outputs to the
published quantities, used by export (inside Spark, on Arrow batches) and by benchmarks.

score = p_click x E[dwell | click] in seconds: the expected engagement per exposure. The
dwell head predicts m = E[log1p(dwell) | click]; E[dwell] = exp(m) x smearing - 1, with
Duan's smearing factor from training (models/train.py).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from models.data import to_inputs
from schemas.features import FeatureSpec

# Columns of the scored batches (export's mapInArrow schema, in this order).
SCORED_COLUMNS = ("user_id", "tag", "prior", "p_click", "dwell_sec", "score")

# Models loaded in this process, by (warehouse, version). It lives here, in a module that
# Spark's Python workers import by name, so a worker loads a model once for all its tasks;
# a cache in a function shipped from a spark-submit __main__ would be copied into each task.
_LOADED: dict[tuple[str, str], tuple] = {}


def load_cached(warehouse: str, version: str):
    """(model, metadata) of ``version``, loaded once per process."""
    key = (warehouse, version)
    if key not in _LOADED:
        from models import registry

        _LOADED[key] = registry.load(warehouse, version)
    return _LOADED[key]


def dwell_seconds(dwell_log_pred: np.ndarray, smearing: float) -> np.ndarray:
    """E[dwell | click] in seconds from the dwell head's log1p prediction."""
    return np.maximum(np.exp(dwell_log_pred) * smearing - 1.0, 0.0)


def score_batch(model, metadata: dict, batch: pa.RecordBatch, spec: FeatureSpec) -> pa.RecordBatch:
    """One Arrow batch of feature rows (with user_id, tag, prior) -> SCORED_COLUMNS."""
    out = model.predict_on_batch(to_inputs(batch, spec))
    p = np.asarray(out["click"], dtype="float64").ravel()
    if "dwell" in out:
        d = dwell_seconds(np.asarray(out["dwell"], dtype="float64").ravel(), metadata["dwell_smearing"])
    else:
        d = np.ones_like(p)
    return pa.RecordBatch.from_arrays(
        [batch.column("user_id"), batch.column("tag"), batch.column("prior"), pa.array(p), pa.array(d),
         pa.array(p * d)], names=list(SCORED_COLUMNS))
