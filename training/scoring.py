"""Turn a trained two-tower model into a scorer for ``training.metrics.evaluate``."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from training.model import TwoTower

Mode = Literal["combined", "features-only", "sequence-only"]


def pad_histories(histories: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_len`` items of each history, right-padded with -1, and their lengths."""
    recent = [np.asarray(h[-max_len:], dtype=np.int64) if max_len else h[:0] for h in histories]
    lengths = torch.tensor([len(h) for h in recent], dtype=torch.long)
    width = max(1, int(lengths.max())) if len(recent) else 1
    padded = torch.full((len(recent), width), -1, dtype=torch.long)
    for row, h in enumerate(recent):
        padded[row, : len(h)] = torch.as_tensor(h)
    return padded, lengths


class TowerScorer:
    """Scores every item for a batch of users: <user_tower(inputs), item_tower(catalog)>."""

    def __init__(
        self,
        model: TwoTower,
        item_feats: dict[str, torch.Tensor],
        user_feats: dict[str, torch.Tensor],
        mode: Mode = "combined",
    ):
        self.model, self.user_feats, self.mode = model.eval(), user_feats, mode
        with torch.inference_mode():
            ids = torch.arange(1, model.cfg.n_items + 1)
            self.items = model.item_tower(ids, item_feats)

    @torch.inference_mode()
    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        tower, users_t = self.model.user_tower, torch.as_tensor(users, dtype=torch.long)
        feats = seq = lengths = ids = None
        if self.mode != "sequence-only" and tower.features is not None:
            feats = {k: v[users_t] for k, v in self.user_feats.items()}
        if self.mode != "features-only" and tower.encoder is not None:
            padded, lengths = pad_histories(histories, self.model.cfg.max_len)
            seq = self.items[padded.clamp(min=0)] * (padded >= 0).unsqueeze(-1)
        if self.mode == "combined" and tower.user_ids is not None:
            ids = users_t + 1
        return tower(feats, seq, lengths, ids)

    def __call__(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return (self.user_vectors(users, histories) @ self.items.T).numpy()
