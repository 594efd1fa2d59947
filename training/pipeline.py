"""One training run, top to bottom: data -> split -> towers -> baselines -> report -> bundle."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from training import bundle, defaults, memory
from training.baselines import run_baselines
from training.data import DownloadError, load_dataset
from training.data.base import Dataset, FeatureColumn
from training.export import export_bundle
from training.features import FeatureSpec
from training.metrics import evaluate
from training.model import TowerConfig, TwoTower, feature_tensors
from training.report import markdown, plot_curves
from training.scoring import TowerScorer
from training.split import Split, leave_one_out
from training.train import History, TrainConfig, Trainer, early_stopping_split, is_main_process

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    dataset: str = "synthetic"
    data_dir: str | None = None
    encoders: list[str] = field(default_factory=lambda: ["sasrec"])
    dim: int = 64
    max_len: int = 50
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.3
    user_id_embedding: bool = False
    # towers trained with seeds seed, seed+1, ... and served as one ensemble; None: derived
    members: int | None = None
    baselines: bool = True
    threads: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)
    derived: dict = field(default_factory=dict)  # the settings training/defaults.py chose

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self, *, resumable: bool = False) -> str:
        """Identifies the configuration; ``resumable`` leaves out ``epochs`` (and the
        refit, which follows it and comes after the checkpointed loop) so that a run can
        be resumed with a larger epoch budget."""
        data = self.to_dict()
        if resumable:
            for name in ("epochs", "refit_epochs"):
                data["train"].pop(name)
                data["derived"].pop(name, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def fit_specs(columns: list[FeatureColumn], rows: list[dict]) -> list[FeatureSpec]:
    return [
        FeatureSpec.fit(
            c.name, c.kind, (r.get(c.name) for r in rows), boundaries=c.boundaries, prefix=c.prefix
        )
        for c in columns
    ]


def up_to_date(out: Path, ds: Dataset, cfg: RunConfig) -> bool:
    """True when ``out/current`` was trained on this data with this configuration."""
    try:
        manifest = bundle.read_manifest(out)
        bundle.verify(out)
    except bundle.BundleError:
        return False
    return (
        manifest["dataset"].get("fingerprint") == ds.fingerprint()
        and manifest.get("run_digest") == cfg.digest()
    )


class Run:
    """Everything one run needs: the data, its split, and encoded features."""

    def __init__(self, ds: Dataset, cfg: RunConfig):
        self.ds, self.cfg = ds, defaults.resolve(cfg, defaults.DataShape.of(ds))
        self.split: Split = leave_one_out(ds)
        self.early_stopping = early_stopping_split(self.split)
        self.user_specs = fit_specs(ds.user_columns, ds.user_features)
        self.item_specs = fit_specs(ds.item_columns, ds.item_features)
        self.item_feats = feature_tensors(self.item_specs, ds.item_features)
        self.user_feats = feature_tensors(self.user_specs, ds.user_features)

    def tower_config(self, encoder: str) -> TowerConfig:
        c = self.cfg
        return TowerConfig(
            n_items=self.ds.n_items,
            n_users=self.ds.n_users,
            dim=c.dim,
            encoder=encoder,
            max_len=c.max_len,
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            dropout=c.dropout,
            user_id_embedding=c.user_id_embedding,
            user_features=[s.to_dict() for s in self.user_specs],
            item_features=[s.to_dict() for s in self.item_specs],
        )

    def scorer(self, model: TwoTower, mode: str = "combined") -> TowerScorer:
        return TowerScorer(model, self.item_feats, self.user_feats, mode)

    def valid_metrics(self, model: TwoTower) -> dict[str, float]:
        metrics = evaluate(self.scorer(model), self.early_stopping, "valid", ks=(10,))["full"]
        model.train()
        return metrics

    def train(self, encoder: str, checkpoint: Path | None, progress: bool) -> Trained:
        """Train ``members`` towers (seeds seed, seed+1, ...), each with early stopping on
        its own validation NDCG, then refit each on train + validation (``refit_epochs``);
        more than one are served as their ensemble."""
        validated, refit, histories, start = [], [], [], time.perf_counter()
        for m in range(self.cfg.members):
            train_cfg = replace(self.cfg.train, seed=self.cfg.train.seed + m)
            torch.manual_seed(train_cfg.seed)
            model = TwoTower(self.tower_config(encoder))
            trainer = Trainer(model, self.split, self.item_feats, self.user_feats, train_cfg)
            ckpt = checkpoint.with_stem(f"{checkpoint.stem}-{m}") if checkpoint else None
            histories.append(trainer.fit(self.valid_metrics, progress=progress, checkpoint=ckpt))
            if train_cfg.refit_epochs:  # keep the early-stopped weights for validation
                validated.append(copy.deepcopy(model))
                trainer.refit(self.split.history("test"), train_cfg.refit_epochs, progress=progress)
            else:
                validated.append(model)
            refit.append(model)
        return Trained(
            validated=TwoTower.ensemble(validated).eval(),
            served=TwoTower.ensemble(refit).eval(),
            histories=histories,
            seconds=time.perf_counter() - start,
        )

    def report_entry(self, trained: Trained, mode: str = "combined") -> dict:
        """Validation metrics of the early-stopped towers, test metrics of the served
        (refit) ones: each is scored by the model that has not seen its targets."""
        valid = evaluate(self.scorer(trained.validated, mode), self.split, "valid")["full"]
        test = evaluate(
            self.scorer(trained.served, mode),
            self.split,
            "test",
            sampled=True,
            seed=self.cfg.train.seed,
        )
        return {"valid": valid, "test": test["full"], "sampled100": test["sampled100"]}


@dataclass
class Trained:
    """One encoder's towers: as early stopping kept them (they score validation) and as
    served, after the refit on train + validation (they score test)."""

    validated: TwoTower
    served: TwoTower
    histories: list[History]
    seconds: float


def catalog(ds: Dataset) -> list[dict]:
    return [
        {
            "id": item_id,
            "title": ds.titles[i] if ds.titles else "",
            "genres": list(ds.item_features[i].get("genres") or []) if ds.item_features else [],
            "features": ds.item_features[i] if ds.item_features else {},
        }
        for i, item_id in enumerate(ds.item_ids)
    ]


def user_table(ds: Dataset, max_len: int) -> list[dict]:
    """Every user's features and most recent items (all interactions, time order)."""
    order = np.lexsort((np.arange(len(ds.users)), ds.timestamps, ds.users))
    users, items = ds.users[order], ds.items[order]
    bounds = np.searchsorted(users, np.arange(ds.n_users + 1))
    return [
        {
            "id": user_id,
            "features": ds.user_features[u] if ds.user_features else {},
            "history": [ds.item_ids[i] for i in items[bounds[u] : bounds[u + 1]][-max_len:]],
        }
        for u, user_id in enumerate(ds.user_ids)
    ]


def popularity(ds: Dataset) -> list[str]:
    counts = np.bincount(ds.items, minlength=ds.n_items)
    return [ds.item_ids[i] for i in np.argsort(-counts, kind="stable")]


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(cfg: RunConfig, fallback: bool) -> Dataset:
    """The configured dataset; with ``fallback``, the synthetic one when MovieLens cannot
    be downloaded (the switch is recorded in ``cfg.dataset``)."""
    try:
        return load_dataset(cfg.dataset, cfg.data_dir)
    except DownloadError as e:
        if not fallback:
            raise
        log.warning(
            "%s could not be downloaded (%s); FALLING BACK to the synthetic dataset", cfg.dataset, e
        )
        cfg.dataset, cfg.data_dir = "synthetic", None
        return load_dataset("synthetic")


def run(
    cfg: RunConfig,
    out: Path,
    *,
    if_changed: bool = False,
    progress: bool = True,
    fallback: bool = False,
    checkpoint_dir: Path | None = None,
) -> Path | None:
    """Train every requested encoder, keep the best on validation, write the bundle.

    Returns the bundle directory (None on non-zero DDP ranks, which don't write)."""
    torch.set_num_threads(cfg.threads)
    ds = load(cfg, fallback)
    log.info(
        "loaded %s: %d users, %d items, %d interactions from %s",
        ds.name,
        ds.n_users,
        ds.n_items,
        len(ds.users),
        ds.source or cfg.data_dir,
    )
    cfg = defaults.resolve(cfg, defaults.DataShape.of(ds))
    if if_changed and up_to_date(out, ds, cfg):
        log.info(
            "bundle %s is up to date with this data and configuration; not retraining",
            bundle.resolve(out),
        )
        return bundle.resolve(out)
    memory.check(memory.estimate(memory.Shape.of(ds, cfg)))
    r = Run(ds, cfg)
    trained, histories, models, skipped = {}, {}, {}, {}
    for encoder in cfg.encoders:
        ckpt = (
            checkpoint_dir / f"{cfg.digest(resumable=True)[:12]}-{encoder}.pt"
            if checkpoint_dir
            else None
        )
        trained[encoder] = result = r.train(encoder, ckpt, progress)
        for m, history in enumerate(result.histories):
            histories[encoder if len(result.histories) == 1 else f"{encoder} #{m + 1}"] = history
        models[encoder] = r.report_entry(result) | {
            "train_seconds": result.seconds,
            "epochs": [len(h.epoch) for h in result.histories],
            "refit_epochs": cfg.train.refit_epochs,
        }
        log.info(
            "%s: valid NDCG@10 %.4f, test NDCG@10 %.4f (%.0f s)",
            encoder,
            models[encoder]["valid"]["NDCG@10"],
            models[encoder]["test"]["NDCG@10"],
            result.seconds,
        )
    selected = max(trained, key=lambda e: models[e]["valid"]["NDCG@10"])
    best = trained[selected].served
    if best.user_tower.features is not None and best.user_tower.encoder is not None:
        for mode in ("features-only", "sequence-only"):
            models[mode] = r.report_entry(trained[selected], mode)
    if cfg.baselines:
        baselines, skipped = run_baselines(r.split, seed=cfg.train.seed)
        models |= baselines
    if not is_main_process():
        return None
    return write(out, r, best, selected, models, histories, skipped)


def write(
    out: Path,
    r: Run,
    best: TwoTower,
    selected: str,
    models: dict,
    histories: dict[str, History],
    skipped: dict[str, str],
) -> Path:
    ds, cfg = r.ds, r.cfg
    version = bundle.new_version()
    report = {
        "dataset": ds.name,
        "protocol": "loo-full",
        "version": version,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "n_interactions": int(len(ds.users)),
        "selected": selected,
        "derived": cfg.derived,
        "peak_memory_mb": peak_memory_mb(),
        "models": models,
        "skipped_baselines": skipped,
        # per-epoch numbers of the curve PNG, for plots that are not a picture (/ui)
        "history": {name: asdict(h) for name, h in histories.items()},
    }
    summary = {
        k: models[selected][stage][k] for stage in ("valid", "test") for k in ("HR@10", "NDCG@10")
    }
    with tempfile.TemporaryDirectory() as tmp:
        curve = plot_curves(histories, Path(tmp) / bundle.CURVE)
        path = export_bundle(
            out,
            best,
            items=catalog(ds),
            users=user_table(ds, best.cfg.max_len),
            popularity=popularity(ds),
            dataset={
                "name": ds.name,
                "source": ds.source,
                "fingerprint": ds.fingerprint(),
                "n_users": ds.n_users,
                "n_items": ds.n_items,
                "n_interactions": int(len(ds.users)),
            },
            train_config=cfg.to_dict(),
            metrics={"selected": selected, **summary},
            report=report,
            report_md=markdown(report),
            curve_png=curve,
            extra={"version": version, "run_digest": cfg.digest()},
        )
    log.info("wrote bundle %s (current -> %s)", path, path.name)
    return path


def init_distributed() -> None:
    """Join the torchrun process group (gloo on CPU, nccl on GPU)."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
