"""The training loop: next-item prediction at every position, early stopping on validation.

Each step takes a batch of users, a window of at most ``max_len + 1`` of their training
items, and asks the user tower at every position (BOS, item 1, ..., item n-1) for the
next item, scored against the item tower's vectors of the whole catalog (or a sampled
subset), minus the items the user already had before that position: evaluation and
serving exclude those, so the softmax need not learn to push them down. Branch dropout
hides the feature or the sequence branch for some users, so features-only (cold user) and
sequence-only (anonymous session) requests both work.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from training import losses
from training.model import TwoTower
from training.split import Split

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int | None = None  # None: derived from the data (training/defaults.py)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    loss: str = "auto"  # auto (derived from the catalog size) | full | sampled
    uniform_negatives: int = 2048
    branch_dropout: float = 0.15  # per user: hide features (or sequence) with this probability
    # per step: embed this share of items from features alone; None: derived (0 without
    # item features, training/defaults.py)
    item_id_dropout: float | None = None
    label_smoothing: float = 0.0
    mask_seen: bool = True  # drop the user's earlier items from each softmax, as evaluation does
    features_loss: float = 0.0  # weight of the cold-user loss: features alone predict the window
    patience: int | None = None  # epochs without validation gain before stopping; None: derived
    # epochs on train + validation after early stopping (Trainer.refit); None: derived
    refit_epochs: int | None = None
    ema: float = 0.99  # > 0: validate and keep an exponential moving average of the weights
    seed: int = 0


@dataclass
class History:
    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    valid_ndcg10: list[float] = field(default_factory=list)
    valid_hr10: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


EARLY_STOPPING_USERS = 10_000


def early_stopping_split(
    split: Split, max_users: int = EARLY_STOPPING_USERS, seed: int = 0
) -> Split:
    """``split`` with validation targets for at most ``max_users`` users, a fixed random
    sample. Early stopping validates after every epoch, ranking each user's target
    against the whole catalog, so its cost grows with users x items; past 10k users the
    sample's standard error on NDCG@10 (about 0.002) is already below the epoch-to-epoch
    changes it has to tell apart. The reported validation metrics use every user."""
    users = split.eval_users("valid")
    if len(users) <= max_users:
        return split
    keep = np.random.default_rng(seed).choice(users, max_users, replace=False)
    valid = np.full_like(split.valid, -1)
    valid[keep] = split.valid[keep]
    return replace(split, valid=valid)


class Batcher:
    """Every training position once per epoch, in padded batches of similar length.

    Each user's training sequence is cut into consecutive windows of ``max_len + 1``
    targets counted back from its last item (the latest window is the one evaluation
    and serving feed the encoder; the earliest may be shorter). A single random window
    per user and epoch used a third of a 150-item history; on short-history data (Amazon,
    ~7 training items) nearly all of a batch's encoder work went to padding, so windows of
    similar length are batched together (sorted with random tie-breaking, batch order
    shuffled)."""

    def __init__(self, sequences: list[np.ndarray], max_len: int, seed: int):
        self.sequences = sequences
        self.window = max_len + 1
        self.rng = np.random.default_rng(seed)

    def windows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, start, end) of every window of ``users``' sequences."""
        lengths = np.array([len(self.sequences[u]) for u in users], dtype=np.int64)
        counts = -(-lengths // self.window)  # ceil: windows per user
        owner = np.repeat(np.arange(len(users)), counts)
        back = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        end = lengths[owner] - back * self.window
        return users[owner], np.maximum(end - self.window, 0), end

    def epoch(self, users: np.ndarray, batch_size: int):
        user, start, end = self.windows(users)
        order = np.lexsort((self.rng.random(len(user)), end - start))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for b in self.rng.permutation(len(batches)):
            rows = batches[b]
            yield self.batch(user[rows], start[rows], end[rows])

    def batch(self, users: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> dict:
        """``targets`` [B, W] windows right-padded with -1; ``earlier`` [2, E] the (row,
        item) pairs of each user's training items before the window."""
        width = int((ends - starts).max())
        targets = np.full((len(users), width), -1, dtype=np.int64)  # -1 = padding
        earlier = []
        for row, (u, start, end) in enumerate(zip(users, starts, ends, strict=True)):
            seq = self.sequences[u]
            targets[row, : end - start] = seq[start:end]
            earlier.append(np.stack([np.full(start, row), seq[:start]]))
        return {
            "users": torch.as_tensor(users),
            "targets": torch.as_tensor(targets),
            "earlier": torch.as_tensor(np.concatenate(earlier, axis=1).astype(np.int64)),
        }


class NextItemObjective(torch.nn.Module):
    """Loss of one batch: every position predicts the next item. A module, so that DDP
    can wrap it (DDP synchronises gradients of whatever its wrapped forward computes)."""

    def __init__(
        self,
        model: TwoTower,
        item_feats: dict[str, torch.Tensor],
        user_feats: dict[str, torch.Tensor],
        item_freq: torch.Tensor,
        cfg: TrainConfig,
        seed: int,
    ):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.item_feats, self.user_feats, self.item_freq = item_feats, user_feats, item_freq
        self.loss_kind = losses.choose(cfg.loss, model.cfg.n_items)
        self.gen = torch.Generator().manual_seed(seed)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Item-tower vectors for 0-based ``ids``, some embedded from features alone."""
        tower_ids = ids + 1
        if self.training and self.cfg.item_id_dropout > 0:
            drop = torch.rand(len(ids), generator=self.gen) < self.cfg.item_id_dropout
            tower_ids = tower_ids.masked_fill(drop, 0)
        feats = {k: v[ids] for k, v in self.item_feats.items()}
        return self.model.item_tower(tower_ids, feats)

    def branch_masks(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user keep masks for (sequence, features); never drop both."""
        p = self.cfg.branch_dropout
        draw = torch.rand(n, generator=self.gen)
        keep_seq, keep_feat = (draw >= p).float(), ((draw < p) | (draw >= 2 * p)).float()
        if self.model.user_tower.features is None:
            keep_seq, keep_feat = torch.ones(n), torch.zeros(n)
        if self.model.user_tower.encoder is None:
            keep_seq, keep_feat = torch.zeros(n), torch.ones(n)
        return keep_seq, keep_feat

    def seen_mask(
        self, targets: torch.Tensor, earlier: torch.Tensor | None, candidates: torch.Tensor
    ) -> torch.Tensor:
        """[P, C] True where candidate c is an item the user had before valid position p
        (earlier in the window, or before it): evaluation excludes those items, so the
        softmax should not spend its mass pushing them down. The target stays unmasked
        (logs may repeat items)."""
        n_rows, width = targets.shape
        n_cand = len(candidates)
        valid = targets >= 0
        rows, cols = valid.nonzero(as_tuple=True)  # the order of targets[valid]
        target_col = torch.searchsorted(candidates, targets[valid])  # targets are candidates
        # first[r, c]: the first position at which row r had candidate c (-1: before the
        # window), over candidate columns only, so a sampled softmax stays [rows, C]
        first = torch.full((n_rows, n_cand), width, dtype=torch.int16)
        if earlier is not None and earlier.numel():
            col = torch.searchsorted(candidates, earlier[1]).clamp(max=n_cand - 1)
            known = candidates[col] == earlier[1]
            first[earlier[0][known], col[known]] = -1
        flat = rows * n_cand + target_col
        first.view(-1).scatter_reduce_(0, flat, cols.to(torch.int16), reduce="amin")
        mask = first[rows] < cols[:, None]
        mask[torch.arange(len(rows)), target_col] = False
        return mask

    def forward(
        self, users: torch.Tensor, targets: torch.Tensor, earlier: torch.Tensor | None = None
    ) -> torch.Tensor:
        """users [B] internal ids; targets [B, W] item windows right-padded with -1;
        earlier [2, E] (row, item) pairs of the users' items before their windows."""
        n_items, valid, inputs = self.model.cfg.n_items, targets >= 0, targets[:, :-1]
        if self.loss_kind == "full":
            candidates = torch.arange(n_items)
        else:
            negatives = torch.randint(n_items, (self.cfg.uniform_negatives,), generator=self.gen)
            candidates = torch.unique(torch.cat([targets[valid], negatives]))
        cand_vectors = self.item_vectors(candidates)
        # Sequence inputs reuse the candidates' vectors where possible (shared item tower).
        needed = torch.unique(torch.cat([candidates, inputs[inputs >= 0]]))
        vectors = cand_vectors if len(needed) == len(candidates) else self.item_vectors(needed)
        seq = vectors[torch.searchsorted(needed, inputs.clamp(min=0))]
        seq = seq * (inputs >= 0).unsqueeze(-1)

        tower = self.model.user_tower
        keep_seq, keep_feat = self.branch_masks(len(users))
        u = torch.zeros(*targets.shape, self.model.cfg.dim)
        cold = None
        if tower.encoder is not None:
            u = u + tower.encode_sequence(seq) * keep_seq[:, None, None]
        if tower.features is not None:
            feats = {k: v[users] for k, v in self.user_feats.items()}
            cold = tower.encode_features(feats)
            u = u + (cold * keep_feat[:, None])[:, None, :]
        if tower.user_ids is not None:
            keep_id = torch.rand(len(users), generator=self.gen) >= self.cfg.branch_dropout
            u = u + (tower.user_ids(users + 1) * keep_id[:, None])[:, None, :]
        mask = self.seen_mask(targets, earlier, candidates) if self.cfg.mask_seen else None
        loss = self.loss(u[valid], targets[valid], candidates, cand_vectors, mask)
        if cold is not None and self.cfg.features_loss > 0 and tower.encoder is not None:
            # every user's features alone, asked for every item of the window
            cold = cold[:, None, :].expand(*targets.shape, -1)[valid]
            loss = loss + self.cfg.features_loss * self.loss(
                cold, targets[valid], candidates, cand_vectors, mask
            )
        return loss

    def loss(
        self,
        u: torch.Tensor,
        y: torch.Tensor,
        candidates: torch.Tensor,
        vectors: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        smoothing = self.cfg.label_smoothing
        if self.loss_kind == "full":
            return losses.full_softmax(u, vectors, y, smoothing, mask)
        return losses.sampled_softmax(
            u, vectors, candidates, y, self.item_freq, self.cfg.uniform_negatives, smoothing, mask
        )


class Trainer:
    def __init__(
        self,
        model: TwoTower,
        split: Split,
        item_feats: dict[str, torch.Tensor],
        user_feats: dict[str, torch.Tensor],
        cfg: TrainConfig,
    ):
        unset = [
            k
            for k in ("epochs", "patience", "item_id_dropout", "refit_epochs")
            if getattr(cfg, k) is None
        ]
        if unset:
            raise ValueError(f"{', '.join(unset)} must be set (training.defaults.resolve)")
        self.model, self.split, self.cfg = model, split, cfg
        counts = np.bincount(np.concatenate(split.train), minlength=model.cfg.n_items) + 1.0
        item_freq = torch.as_tensor(counts / counts.sum(), dtype=torch.float32)
        self.train_users = np.array([u for u, s in enumerate(split.train) if len(s) > 0])
        self.ddp = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if self.ddp else 0
        self.objective = NextItemObjective(
            model, item_feats, user_feats, item_freq, cfg, seed=cfg.seed + rank
        )
        self.step = (
            torch.nn.parallel.DistributedDataParallel(self.objective)
            if self.ddp
            else self.objective
        )
        self.batcher = Batcher(split.train, model.cfg.max_len, cfg.seed + rank)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.average = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema else None
        )

    @property
    def evaluated(self) -> TwoTower:
        """The weights that are validated and kept: the running average when there is one."""
        return self.average.module if self.average is not None else self.model

    def train_epoch(self, users: np.ndarray) -> float:
        self.step.train()
        total, steps = 0.0, 0
        for batch in self.batcher.epoch(users, self.cfg.batch_size):
            loss = self.step(batch["users"], batch["targets"], batch["earlier"])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.opt.step()
            if self.average is not None:
                self.average.update_parameters(self.model)
            total, steps = total + loss.item(), steps + 1
        return total / max(steps, 1)

    # -- the loop -------------------------------------------------------------
    def fit(
        self,
        evaluate: Callable[[TwoTower], dict],
        *,
        progress: bool = True,
        checkpoint: Path | None = None,
    ) -> History:
        """Train until validation NDCG@10 stops improving; keep the best weights."""
        history, best, best_state, start = History(), -math.inf, None, 0
        if checkpoint is not None and checkpoint.is_file():
            start, history, best, best_state = self.load_checkpoint(checkpoint)
            log.info("resumed from %s at epoch %d", checkpoint, start)
        shard = self.shard(self.train_users)
        bar = tqdm(
            range(start, self.cfg.epochs),
            desc="train",
            disable=not progress,
            initial=start,
            total=self.cfg.epochs,
        )
        stale = (
            len(history.epoch) - 1 - int(np.argmax(history.valid_ndcg10)) if history.epoch else 0
        )
        for epoch in bar:
            t0 = time.perf_counter()
            loss = self.train_epoch(shard)
            metrics = evaluate(self.evaluated)
            ndcg, hr = metrics["NDCG@10"], metrics["HR@10"]
            for key, value in (
                ("epoch", epoch + 1),
                ("loss", loss),
                ("valid_ndcg10", ndcg),
                ("valid_hr10", hr),
                ("seconds", time.perf_counter() - t0),
            ):
                getattr(history, key).append(value)
            if ndcg > best:
                best, best_state, stale = ndcg, copy.deepcopy(self.evaluated.state_dict()), 0
            else:
                stale += 1
            bar.set_postfix(loss=f"{loss:.3f}", ndcg10=f"{ndcg:.4f}", best=f"{best:.4f}")
            if not progress:
                log.info(
                    "epoch %d: loss %.4f, valid NDCG@10 %.4f HR@10 %.4f (best %.4f), %.0f s",
                    *(epoch + 1, loss, ndcg, hr, best, history.seconds[-1]),
                )
            if checkpoint is not None and is_main_process():
                self.save_checkpoint(checkpoint, epoch + 1, history, best, best_state)
            if stale >= self.cfg.patience:
                log.info("early stop at epoch %d: best validation NDCG@10 %.4f", epoch + 1, best)
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return history

    def refit(
        self,
        sequences: list[np.ndarray],
        epochs: int,
        *,
        progress: bool = True,
        after_epoch: Callable[[int, TwoTower], None] | None = None,
    ) -> None:
        """Continue training the kept weights for ``epochs`` epochs on ``sequences``: each
        user's training items plus their validation item. Early stopping used that item
        to choose the weights, so the tower never learned from the newest interaction of
        any user, while the baselines are refit with it before test; this step gives the
        tower the same data. Nothing is validated here (the validation items are now
        training data): the number of epochs is chosen beforehand on a split shifted one
        item back (``shift_back``, bench/refit15.py)."""
        self.batcher = Batcher(sequences, self.model.cfg.max_len, self.cfg.seed + 1)
        users = self.shard(np.array([u for u, s in enumerate(sequences) if len(s) > 0]))
        if self.average is not None:  # average from the kept weights, not the last epoch's
            self.average = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema)
            )
        for epoch in tqdm(range(epochs), desc="refit", disable=not progress):
            loss = self.train_epoch(users)
            log.info("refit epoch %d/%d on train + validation: loss %.4f", epoch + 1, epochs, loss)
            if after_epoch is not None:  # bench/refit15.py scores each epoch's weights
                after_epoch(epoch + 1, self.evaluated)
        self.model.load_state_dict(self.evaluated.state_dict())

    def shard(self, users: np.ndarray) -> np.ndarray:
        if not self.ddp:
            return users
        return users[dist.get_rank() :: dist.get_world_size()]

    def save_checkpoint(
        self, path: Path, epoch: int, history: History, best: float, best_state: dict | None
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "average": self.average.state_dict() if self.average is not None else None,
                "opt": self.opt.state_dict(),
                "history": asdict(history),
                "best": best,
                "best_state": best_state,
                "rng": self.objective.gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "np_rng": self.batcher.rng.bit_generator.state,
            },
            tmp,
        )
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path):
        state = torch.load(path, weights_only=True)
        self.model.load_state_dict(state["model"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.opt.load_state_dict(state["opt"])
        self.objective.gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])  # dropout draws from the global generator
        self.batcher.rng.bit_generator.state = state["np_rng"]
        return state["epoch"], History(**state["history"]), state["best"], state["best_state"]


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
