"""Write a trained model and its catalog as an artifact bundle (layout: docs/BUNDLE.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from training import bundle
from training.model import TwoTower, feature_tensors


@torch.inference_mode()
def item_embeddings(model: TwoTower, items: list[dict]) -> np.ndarray:
    """Item-tower vectors for the whole catalog, row i = internal item i."""
    ids = torch.arange(1, len(items) + 1)
    feats = feature_tensors(model.cfg.specs("item"), [it["features"] for it in items])
    was_training = model.training
    vectors = model.eval().item_tower(ids, feats).float().numpy()
    model.train(was_training)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def export_bundle(
    root: str | Path,
    model: TwoTower,
    *,
    items: list[dict[str, Any]],
    users: list[dict[str, Any]],
    popularity: list[str],
    dataset: dict[str, Any],
    train_config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    report_md: str = "",
    curve_png: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """items: [{id, title, genres, features}], users: [{id, features, history}] (ids are
    external strings, history newest last), popularity: item ids, most popular first."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    vectors = item_embeddings(model, items)

    def write(tmp: Path) -> None:
        save_file(state, tmp / bundle.MODEL_FILE)
        np.save(tmp / bundle.ITEM_EMBEDDINGS, vectors)
        for name, data in (
            (bundle.ITEMS, items),
            (bundle.USERS, users),
            (bundle.POPULARITY, popularity),
            (bundle.REPORT_JSON, report or {}),
        ):
            (tmp / name).write_text(json.dumps(data, ensure_ascii=False))
        (tmp / bundle.REPORT_MD).write_text(report_md)
        if curve_png is not None:
            shutil.copyfile(curve_png, tmp / bundle.CURVE)

    manifest = {
        "dataset": dataset,
        "config": train_config,
        "model": model.cfg.to_dict() | {"score": "inner_product"},
        "dims": {"embedding": model.cfg.vector_dim, "items": len(items), "users": len(users)},
        "metrics": metrics or {},
        "index": None,
    } | (extra or {})
    return bundle.write_bundle(root, manifest, write)
