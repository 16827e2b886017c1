"""Model versions under ``<warehouse>/models/``: ``<version>/`` folders, the promotion
history ``promoted/<D>`` (the version day D's training promoted) and ``current``, naming the
promotion of the latest day (what is served now). Each file is replaced atomically (write a
temporary file, rename).

A step of day D reads :func:`version_as_of` D, never ``current``: a re-run or backfill of D
after later days were trained would otherwise score D, or gate D's model, with a model
trained on the very clicks that judge D.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from schemas.catalog import absolute_uri, models_location

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
PROMOTED_DIR = "promoted"


def models_dir(warehouse: str) -> Path:
    uri = absolute_uri(models_location(warehouse))
    if not uri.startswith("file:"):
        raise ValueError(f"models live on a local or mounted file system; {uri} is not one: "
                         "point storage.warehouse at a mounted path for the train step")
    return Path(uri.removeprefix("file://").removeprefix("file:"))


def current_version(warehouse: str) -> str | None:
    pointer = models_dir(warehouse) / "current"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    return name or None


def promotions(warehouse: str) -> dict[str, str]:
    """{day: version promoted by that day's training}, in date order."""
    folder = models_dir(warehouse) / PROMOTED_DIR
    if not folder.is_dir():
        return {}
    found = {p.name: p.read_text().strip() for p in folder.iterdir() if not p.name.startswith(".")}
    return {day: found[day] for day in sorted(found) if found[day]}


def version_as_of(warehouse: str, day: str) -> str | None:
    """The version that was current at the end of ``day`` (ISO date): the one promoted by the
    latest training of a day up to ``day``; None before the first. A warehouse without a
    promotion history (written before it was kept) has only ``current`` to go by."""
    history = promotions(warehouse)
    if not history:
        version = current_version(warehouse)
        if version is not None:
            log.warning("models: no promotion history under %s; using current (%s) for %s",
                        models_dir(warehouse), version, day)
        return version
    earlier = [d for d in history if d <= day]
    return history[earlier[-1]] if earlier else None


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def promote(warehouse: str, version: str, day: str) -> None:
    """Record ``version`` as promoted by ``day``'s training; ``current`` follows the latest
    day's promotion, so a re-run of an earlier day never points production back."""
    root = models_dir(warehouse)
    if not (root / version / MODEL_FILE).exists():
        raise FileNotFoundError(f"no model at {root / version / MODEL_FILE}")
    (root / PROMOTED_DIR).mkdir(exist_ok=True)
    _replace(root / PROMOTED_DIR / day, version + "\n")
    latest = promotions(warehouse)
    _replace(root / "current", latest[max(latest)] + "\n")


def load(warehouse: str, version: str | None = None):
    """(keras model, metadata) of ``version`` (default: current), loaded with safe_mode on."""
    import keras

    import models.layers  # noqa: F401  (registers the custom layers)
    import models.utpm  # noqa: F401

    version = version or current_version(warehouse)
    if version is None:
        raise FileNotFoundError(f"no promoted model under {models_dir(warehouse)}: run `tagrecall train --date D`")
    folder = models_dir(warehouse) / version
    model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    return model, metadata
