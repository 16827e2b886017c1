"""Model versions under ``<warehouse>/models/``: ``<version>/`` folders and a ``current``
file naming the promoted one, replaced atomically (write a temporary file, rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from schemas.catalog import absolute_uri, models_location

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"


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


def promote(warehouse: str, version: str) -> None:
    root = models_dir(warehouse)
    if not (root / version / MODEL_FILE).exists():
        raise FileNotFoundError(f"no model at {root / version / MODEL_FILE}")
    tmp = root / f".current.{os.getpid()}"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / "current")


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
