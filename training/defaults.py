"""Settings derived from the data's shape, for every option the user left unset.

One rule for every log, chosen on the validation splits of ML-100K, amazon-beauty and
amazon-sports together (docs/BENCHMARKS.md "Quality" lists the runs). What it reads, why:

- **loss**: the full softmax scores every item at every training position, so an epoch
  costs positions x items; the sampled softmax (in-batch targets + ``uniform_negatives``
  uniform items, logQ-corrected) costs positions x (negatives + batch targets). Full is
  kept up to ``FULL_SOFTMAX_MAX_ITEMS``, where both cost about the same; on
  amazon-beauty's 12k items a full-softmax epoch took 3.4x the CPU time of a sampled
  one (55 s vs 16 s, 1 thread) and learned no faster per epoch (validation NDCG@10 after
  2 epochs 0.0152 vs 0.0143), so at equal CPU it was far behind (0.0152 at 116 s vs the
  sampled tower's 0.0311 at 115 s; bench/screen15.py, bench/results/screen15.jsonl).
- **epochs**: an epoch visits every training position once, so big logs need fewer
  passes: the budget is ``POSITION_PASSES`` position visits (a little over half of what
  ML-100K's towers used before early stopping), capped at ``MAX_EPOCHS``, at least
  ``MIN_EPOCHS``: ML-100K (98k training positions) 51 epochs, amazon-beauty 33,
  amazon-sports 22, a 20M-interaction log 2. The training cost is then about the same
  for every log below 2.5M interactions and linear in interactions above.
- **patience**: a tenth of the epoch budget (at least 3): "no longer improving" is
  measured in the same passes.
- **members**: a second ensemble member costs as much as the first for about +0.005
  NDCG@10 (ML-100K); it is trained only when one member's budget is cheap, at most
  ``ENSEMBLE_MAX_WORK`` scored (position, candidate) pairs.
- **item_id_dropout**: embedding a share of the items from their features alone teaches
  the item tower to place a new (cold) item from its features. A catalog without item
  features has nothing to place it by: every dropped item becomes the same vector, so
  the share only turns that many targets and inputs into noise. It is
  ``ITEM_ID_DROPOUT`` with item features, 0 without (amazon-beauty / -sports have none).
  Paired on amazon-beauty (same seed, validation NDCG@10 at epochs 4-6): 0.0238, 0.0283,
  0.0317 without vs 0.0233, 0.0269, 0.0311 with, at about 7 % less CPU; amazon-sports
  (epochs 1-4) 0.0077, 0.0106, 0.0145, 0.0171 vs 0.0075, 0.0102, 0.0138, 0.0161.
  ML-100K has item features: its setting is unchanged.

- **refit_epochs**: early stopping needs each user's validation item, so the tower it
  keeps never learned from the newest interaction of any user, while every baseline is
  refit with it before test. The kept towers are therefore trained ``refit_epochs`` more
  on train + validation, and those are served and tested (validation is scored before).
  The count was chosen on validation alone, by running the same procedure one item
  earlier (``training.split.shift_back``: early stopping on each user's last training
  item, refit on the training items, scored on the real validation items;
  bench/refit15.py, docs/BENCHMARKS.md "Quality"). The refit adds one training position
  per evaluated user, 15 % of amazon-beauty's and amazon-sports' positions but 1 % of
  ML-100K's, and that share is what it depends on: on the Amazon sets every refit epoch
  helped, fast at first (beauty 0.0466 before, 0.0550 after 6 epochs, 0.0565 after 9;
  sports 0.0230, 0.0290 after 6), on ML-100K it neither helped nor hurt (0.1304 before,
  0.1298-0.1325 over 1-10 epochs). So it lasts ``REFIT_PASSES`` x (that share) x the
  epoch budget, at least 1: amazon-beauty 10 epochs, amazon-sports 7, ML-100K 1, a
  20M-interaction log 1; what it adds to the training cost is that share, doubled.

Not derived: the towers' dropout stays 0.3 on every shape. SASRec's authors use 0.5 on
the Amazon sets, but within this loop's epoch budget 0.5 learned much more slowly
(amazon-beauty validation NDCG@10 after 4 epochs 0.0146 vs 0.0238), so a short-history
rule for it did not pay on validation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from training.data.base import Dataset
from training.losses import FULL_SOFTMAX_MAX_ITEMS

if TYPE_CHECKING:
    from training.pipeline import RunConfig

log = logging.getLogger(__name__)

POSITION_PASSES = 5_000_000
MIN_EPOCHS, MAX_EPOCHS = 2, 200
ENSEMBLE_MAX_WORK = 10e9
ITEM_ID_DROPOUT = 0.05
REFIT_PASSES = 2.0


@dataclass(frozen=True)
class DataShape:
    """What the rule reads: sizes, and the training positions (next-item targets)."""

    n_users: int
    n_items: int
    n_interactions: int
    positions: int  # interactions minus each evaluated user's validation and test item
    median_history: float  # median training items per user with any
    item_features: bool = False  # the catalog has item feature columns
    evaluated: int | None = None  # users with a validation item (None: every user)

    @classmethod
    def of(cls, ds: Dataset) -> DataShape:
        per_user = np.bincount(ds.users, minlength=ds.n_users)
        train = per_user - 2 * (per_user >= 3)  # leave-one-out keeps 2 for valid / test
        return cls(
            n_users=int(ds.n_users),
            n_items=int(ds.n_items),
            n_interactions=int(len(ds.users)),
            positions=int(train.sum()),
            median_history=float(np.median(train[train > 0])) if (train > 0).any() else 0.0,
            item_features=bool(ds.item_columns),
            evaluated=int((per_user >= 3).sum()),
        )


def derive(
    shape: DataShape, uniform_negatives: int = 2048, epochs: int | None = None
) -> dict[str, object]:
    """The derived value of every data-dependent setting (see the module docstring);
    ``epochs``, when the user set it, is the budget the refit is a share of."""
    loss = "full" if shape.n_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"
    derived_epochs = round(POSITION_PASSES / max(shape.positions, 1))
    derived_epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, derived_epochs))
    # sampled: the uniform negatives plus about half as many in-batch targets (amazon-beauty)
    candidates = shape.n_items if loss == "full" else 1.5 * uniform_negatives
    work = derived_epochs * shape.positions * candidates
    return {
        "loss": loss,
        "epochs": derived_epochs,
        "patience": max(3, math.ceil(derived_epochs / 10)),
        "members": 2 if work <= ENSEMBLE_MAX_WORK else 1,
        "item_id_dropout": ITEM_ID_DROPOUT if shape.item_features else 0.0,
        "refit_epochs": refit_epochs(shape, epochs or derived_epochs),
    }


def refit_epochs(shape: DataShape, epochs: int) -> int:
    """Epochs on train + validation after early stopping: the refit adds one position per
    evaluated user, and lasts ``REFIT_PASSES`` times that share of the epoch budget."""
    added = (shape.n_users if shape.evaluated is None else shape.evaluated) / max(
        shape.positions, 1
    )
    return max(1, round(REFIT_PASSES * epochs * added))


RUN_FIELDS = ("members",)
TRAIN_FIELDS = ("loss", "epochs", "patience", "item_id_dropout", "refit_epochs")


def resolve(cfg: RunConfig, shape: DataShape) -> RunConfig:
    """``cfg`` with every unset (None, or ``loss="auto"``) data-dependent setting derived
    from ``shape``; ``cfg.derived`` names what was derived, and the bundle records both."""
    derived = derive(shape, cfg.train.uniform_negatives, cfg.train.epochs)
    unset = {k for k in RUN_FIELDS if getattr(cfg, k) is None}
    unset |= {k for k in TRAIN_FIELDS if getattr(cfg.train, k) in (None, "auto")}
    chosen = {k: v for k, v in derived.items() if k in unset}
    train = replace(cfg.train, **{k: v for k, v in chosen.items() if k in TRAIN_FIELDS})
    run_values = {k: v for k, v in chosen.items() if k in RUN_FIELDS}
    if chosen:
        log.info("settings derived from the data (%s): %s", shape, chosen)
    return replace(cfg, **run_values, train=train, derived=cfg.derived | chosen)
