"""Item-tower vectors for items the model never saw, from their features alone.

The item tower takes id 0 (the *unknown item* embedding, all zeros) plus the encoded
features, so a new item gets the vector training would give an item with those features
and no interaction history. Feature values training never saw encode to the unknown
bucket; they are logged, not an error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("index")


def item_vectors(bundle: str | Path, features: list[dict[str, Any]]) -> np.ndarray:
    """Raw item-tower vectors float32 [len(features), d] for the bundle's model."""
    from training.bundle import load_towers

    for row in features:
        if not isinstance(row, dict):
            raise ValueError(f"item features must be a JSON object, got {row!r}")
    model = load_towers(bundle)
    return tower_vectors(model.item_tower, model.cfg.specs("item"), features)


def tower_vectors(item_tower, specs: list, features: list[dict[str, Any]]) -> np.ndarray:
    """``item_vectors`` with a loaded item tower and its feature specs (the service keeps
    the tower between writes instead of reading the weights for each one)."""
    import torch

    from training.model import feature_tensors

    _report_unknown(specs, features)
    with torch.inference_mode():
        encoded = feature_tensors(specs, features)
        unknown_ids = torch.zeros(len(features), dtype=torch.long)
        vectors = item_tower(unknown_ids, encoded).float().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _report_unknown(specs: list, features: list[dict[str, Any]]) -> None:
    names = {spec.name for spec in specs}
    for row in features:
        for spec in specs:
            _, known = spec.encode(row.get(spec.name))
            if not known:
                log.warning(
                    "feature %s=%r was not seen in training: encoded as unknown",
                    spec.name,
                    row.get(spec.name),
                )
        for extra in sorted(set(row) - names):
            log.warning("feature %r is not an item feature of this model: ignored", extra)
