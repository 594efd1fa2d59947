"""Leave-one-out by time: per user, the last interaction is the test target, the one
before it the validation target, the rest is training history.

Each user's interactions are ordered by timestamp with ties kept in file order (a
stable sort), so the split is deterministic. Users with fewer than 3 interactions
keep everything in train and are not evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from training.data.base import Dataset

Stage = Literal["valid", "test"]


@dataclass
class Split:
    n_items: int
    train: list[np.ndarray]  # per user, item ids in time order
    valid: np.ndarray  # int64[n_users], -1 if not evaluated
    test: np.ndarray  # int64[n_users], -1 if not evaluated

    @property
    def n_users(self) -> int:
        return len(self.train)

    def history(self, stage: Stage) -> list[np.ndarray]:
        """What a model may see before predicting ``stage``: train, plus the validation
        item when predicting test."""
        if stage == "valid":
            return self.train
        if stage != "test":
            raise ValueError(f"stage must be 'valid' or 'test', not {stage!r}")
        pairs = zip(self.train, self.valid, strict=True)
        return [np.append(seq, v) if v >= 0 else seq for seq, v in pairs]

    def targets(self, stage: Stage) -> np.ndarray:
        return {"valid": self.valid, "test": self.test}[stage]

    def eval_users(self, stage: Stage) -> np.ndarray:
        return np.flatnonzero(self.targets(stage) >= 0)


def leave_one_out(ds: Dataset) -> Split:
    order = np.lexsort((np.arange(len(ds.users)), ds.timestamps, ds.users))
    users, items = ds.users[order], ds.items[order].astype(np.int64)
    bounds = np.searchsorted(users, np.arange(ds.n_users + 1))
    lengths = np.diff(bounds)
    evaluated = lengths >= 3
    ends = bounds[1:]
    valid = np.where(evaluated, items[np.maximum(ends - 2, 0)], -1)
    test = np.where(evaluated, items[np.maximum(ends - 1, 0)], -1)
    # per user, the training part ends two items early when the user is evaluated
    keep = np.ones(len(items), bool)
    last_two = np.concatenate([ends[evaluated] - 2, ends[evaluated] - 1])
    keep[last_two] = False
    train_bounds = np.cumsum(np.where(evaluated, lengths - 2, lengths))[:-1]
    train = np.split(items[keep], train_bounds) if ds.n_users else []
    return Split(n_items=ds.n_items, train=train, valid=valid, test=test)


def shift_back(split: Split) -> Split:
    """``split`` one item earlier: each evaluated user's last training item becomes the
    validation target and the validation item the test target. Choosing a setting by its
    "test" score here chooses it on validation data only (the real test items are not in
    it); used to choose how long to refit on train + validation (``Trainer.refit``).
    Users with fewer than two training items are not evaluated."""
    ok = (split.valid >= 0) & np.array([len(s) >= 2 for s in split.train], dtype=bool)
    train = [s[:-1] if keep else s for s, keep in zip(split.train, ok, strict=True)]
    last = np.array([s[-1] if keep else -1 for s, keep in zip(split.train, ok, strict=True)])
    return Split(
        n_items=split.n_items,
        train=train,
        valid=last.astype(np.int64),
        test=np.where(ok, split.valid, -1),
    )
