"""Out-of-memory risk, announced before a run starts rather than found after an hour.

``estimate`` predicts the peak resident memory of ``python -m training train`` from the
data's shape (interactions, users, items) and the configuration (dimensions, batch,
sequence length, loss, ensemble size, baselines). The phases run one after another,
so the peak is what stays resident (interpreter and libraries, the interactions and
their split, the trained towers) plus the largest phase: a training step, evaluation,
a baseline, or writing the bundle. The per-cell constants are counted from the code
(which buffers a step holds at once); docs/BENCHMARKS.md "Scale" sets the estimate
next to the measured peak RSS.

``check`` logs one line with the estimate and the memory available (MemAvailable,
or the cgroup limit when lower), warns above 80 % of it and refuses above 100 %,
unless ``TOWERREC_IGNORE_MEMORY_ESTIMATE=1``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from training import losses
from training.baselines import BASELINES, DENSE_BUDGET_BYTES, unaffordable
from training.metrics import EVAL_ELEMENTS

log = logging.getLogger(__name__)

GiB = 2**30
RUNTIME = 600 * 2**20  # Python, torch, numpy, pandas, scipy, faiss once imported
OVERRIDE = "TOWERREC_IGNORE_MEMORY_ESTIMATE"
WARN_SHARE = 0.8


class MemoryRiskError(RuntimeError):
    """The estimated peak exceeds the memory this machine has available."""


@dataclass
class Shape:
    """What the estimate needs to know about a run."""

    n_interactions: int
    n_users: int
    n_items: int
    dim: int = 64
    max_len: int = 50
    batch_size: int = 128
    members: int = 2
    loss: str = "auto"
    uniform_negatives: int = 2048
    baselines: bool = True
    user_id_embedding: bool = False

    @classmethod
    def of(cls, ds, cfg) -> Shape:
        """From a loaded Dataset and a pipeline RunConfig."""
        train = cfg.train
        return cls(
            n_interactions=len(ds.users),
            n_users=ds.n_users,
            n_items=ds.n_items,
            dim=cfg.dim,
            max_len=cfg.max_len,
            batch_size=train.batch_size,
            members=cfg.members,
            loss=train.loss,
            uniform_negatives=getattr(train, "uniform_negatives", 2048),
            baselines=cfg.baselines,
            user_id_embedding=cfg.user_id_embedding,
        )


@dataclass
class Estimate:
    parts: dict[str, int]  # bytes: resident parts, then the phases (peak = resident + max)
    resident: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # baselines over budget

    @property
    def peak(self) -> int:
        phases = [v for k, v in self.parts.items() if k not in self.resident]
        return sum(self.parts[k] for k in self.resident) + max(phases, default=0)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
        text = f"peak ~{self.peak / GiB:.1f} GiB (GiB: {parts})"
        for name, reason in self.skipped.items():
            text += f"; baseline {name} will be skipped: {reason}"
        return text


def estimate(shape: Shape, budget: int = DENSE_BUDGET_BYTES) -> Estimate:
    s = shape
    n, users, items = s.n_interactions, s.n_users, s.n_items
    # loading: the CSV as Arrow strings plus ids and codes (~100 B a row); once loaded,
    # users, items, timestamps (int64) and the split's copy of the items stay (~40 B)
    load = 100 * n
    data = 40 * n + 400 * users + 300 * items  # + id strings and per-user arrays
    # one tower: item and position embeddings plus ~14 dim x dim matrices (MLPs,
    # attention); training holds weights, gradients, two Adam moments, the running
    # average and the best weights (6 copies); finished members stay (1 copy each)
    params = (
        4 * s.dim * (items + 1 + s.max_len + 14 * s.dim + (users if s.user_id_embedding else 0))
    )
    towers = s.members * params
    kind = losses.choose(s.loss, items)
    # the loss scores every valid position of a step's windows: batch x mean window
    positions = int(s.batch_size * min(s.max_len + 1, n / max(users, 1)))
    candidates = items if kind == "full" else min(items, s.uniform_negatives + positions)
    # per (position, candidate): logits, masked logits, log-softmax and two gradients
    # (float32) plus the seen-mask byte; per (row, candidate) an int16
    step = positions * candidates * 21 + s.batch_size * candidates * 2
    step += positions * s.dim * 4 * 40  # encoder activations kept for backward
    train = 6 * params + step
    # evaluation: a bounded block of scores and its masked copy, ranks and top-k, and
    # each member's item vectors
    evaluation = EVAL_ELEMENTS * 4 * 6 + s.members * 4 * s.dim * items
    parts = {"runtime": RUNTIME, "data": data, "towers": towers, "load": load}
    parts |= {"training step": train, "evaluation": evaluation}
    skipped = {}
    if s.baselines:
        skipped = unaffordable(items, n, budget)
        fitted = [m.memory_bytes(items, n) for m in BASELINES if m.name not in skipped]
        parts["baselines"] = max(fitted, default=0) + EVAL_ELEMENTS * 4 * 6
    # the bundle: every user's recent items and every item as JSON-ready dicts
    parts["bundle"] = users * (200 + 70 * s.max_len) + items * 400
    return Estimate(parts, resident=("runtime", "data", "towers"), skipped=skipped)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, capped by a cgroup v2/v1 limit; None if unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            found.append(int(text))
    return min(found) if found else None


def check(est: Estimate, available: int | None = None) -> None:
    """Log the estimate; warn when it nears ``available``; refuse when it exceeds it."""
    available = available_bytes() if available is None else available
    if available is None:
        log.info("memory estimate: %s; available memory unknown", est.describe())
        return
    line = f"memory estimate: {est.describe()}; available {available / GiB:.1f} GiB"
    if est.peak > available and os.environ.get(OVERRIDE) != "1":
        raise MemoryRiskError(
            f"{line}. The run would likely run out of memory; lower --batch-size, --dim or "
            f"--max-len, use --loss sampled or --no-baselines, or set {OVERRIDE}=1 to try anyway"
        )
    if est.peak > WARN_SHARE * available:
        log.warning("%s: OUT-OF-MEMORY RISK (over %d %%)", line, WARN_SHARE * 100)
    else:
        log.info(line)
