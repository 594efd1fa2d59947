"""How long to refit on train + validation, chosen on validation only (issue 15).

    python -m bench.refit15 DATASET [--refit 6] [--epochs N] [--out FILE]

Early stopping needs the validation items, so the tower that it keeps never learned from
them, while the baselines are refit with them before test. ``Trainer.refit`` continues the
kept tower on train + validation for a fixed number of epochs; that number cannot be
chosen on validation directly (the validation items are then training data). So this
runs the whole procedure one item earlier (``training.split.shift_back``): early stopping
on each user's last training item, refit on the training items, and the score on the
real validation items, which stand in for test. Test is never computed.

One JSON line per refit epoch (0 = no refit) goes to bench/results/refit15.jsonl, with the
Markov chain fit without and with the stand-in validation item for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench._common import shared_dataset
from training.baselines import MarkovChain
from training.metrics import evaluate
from training.model import TwoTower
from training.pipeline import Run, RunConfig
from training.split import shift_back
from training.train import Trainer, early_stopping_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="a directory name under ../shared/data")
    p.add_argument("--refit", type=int, default=6, help="Refit epochs to score (each one).")
    p.add_argument("--epochs", type=int, help="Cap the early-stopped run (default: derived).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/refit15.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(1)
    kind, ds = shared_dataset(a.dataset)
    r = Run(ds, RunConfig(dataset=kind, threads=1, members=1))
    shifted = shift_back(r.split)
    early = early_stopping_split(shifted)
    cfg = replace(r.cfg.train, seed=a.seed, epochs=a.epochs or r.cfg.train.epochs)
    torch.manual_seed(cfg.seed)
    model = TwoTower(r.tower_config("sasrec"))
    trainer = Trainer(model, shifted, r.item_feats, r.user_feats, cfg)
    cpu0 = time.process_time()

    def stage_valid(m: TwoTower) -> dict:
        out = evaluate(r.scorer(m), early, "valid", ks=(10,))["full"]
        m.train()
        return out

    history = trainer.fit(stage_valid, progress=False)
    markov = {
        name: evaluate(MarkovChain().fit(shifted, stage).score, shifted, "test")["full"]
        for name, stage in (("markov train-only", "valid"), ("markov refit", "test"))
    }

    def record(epoch: int, m: TwoTower) -> None:
        metrics = evaluate(r.scorer(m), shifted, "test")["full"]  # the real validation items
        m.train()
        row = {
            "dataset": a.dataset,
            "seed": a.seed,
            "epochs_trained": len(history.epoch),
            "best_epoch": int(np.argmax(history.valid_ndcg10)) + 1,
            "refit_epoch": epoch,
            "ndcg10": round(metrics["NDCG@10"], 4),
            "hr10": round(metrics["HR@10"], 4),
            "markov_train_only_ndcg10": round(markov["markov train-only"]["NDCG@10"], 4),
            "markov_refit_ndcg10": round(markov["markov refit"]["NDCG@10"], 4),
            "cpu_s": round(time.process_time() - cpu0, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(json.dumps(row), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    record(0, model)  # fit() left the kept (best, averaged) weights in the model
    trainer.refit(shifted.history("test"), a.refit, progress=False, after_epoch=record)


if __name__ == "__main__":
    main()
