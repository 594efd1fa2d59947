"""Paired screening of training settings on the shared datasets (issue 15, part 1).

    python -m bench.screen15 DATASET VARIANT [VARIANT ...] --cpu-seconds S

Each variant trains one member from the same seed for at most ``--epochs`` epochs or
``--cpu-seconds`` of this process's CPU time, whichever ends first, validating (the
early-stopping sample of validation users) after every epoch. Test is never computed.
One JSON line per (variant, epoch) is appended to bench/results/screen15.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench._common import shared_dataset
from training.model import TwoTower
from training.pipeline import Run, RunConfig
from training.train import TrainConfig, Trainer

# the settings before issue 15's part 1 (dropout 0.3, item-id dropout 0.05), made explicit
OLD = ({"dropout": 0.3}, {"item_id_dropout": 0.05})
VARIANTS = {
    "current": OLD,
    "do5": ({"dropout": 0.5}, {"item_id_dropout": 0.05}),
    "idd0": ({"dropout": 0.3}, {"item_id_dropout": 0.0}),
    "do5-idd0": ({"dropout": 0.5}, {"item_id_dropout": 0.0}),
    "full": ({"dropout": 0.3}, {"loss": "full", "item_id_dropout": 0.05}),
    "full-do5-idd0": ({"dropout": 0.5}, {"loss": "full", "item_id_dropout": 0.0}),
    "sampled-do5-idd0": ({"dropout": 0.5}, {"loss": "sampled", "item_id_dropout": 0.0}),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("variants", nargs="+")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--cpu-seconds", type=float, default=300)
    p.add_argument("--out", type=Path, default=Path("bench/results/screen15.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(1)
    kind, ds = shared_dataset(a.dataset)
    for name in a.variants:
        run_kw, train_kw = VARIANTS[name]
        cfg = replace(RunConfig(dataset=kind, threads=1, members=1, **run_kw))
        cfg = replace(cfg, train=TrainConfig(**train_kw))
        r = Run(ds, cfg)
        tcfg = replace(r.cfg.train, epochs=a.epochs, patience=a.epochs)
        torch.manual_seed(tcfg.seed)
        model = TwoTower(r.tower_config("sasrec"))
        trainer = Trainer(model, r.split, r.item_feats, r.user_feats, tcfg)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for epoch in range(1, a.epochs + 1):
            loss = trainer.train_epoch(trainer.train_users)
            train_cpu = time.process_time() - cpu0
            m = r.valid_metrics(trainer.evaluated)
            row = {
                "dataset": a.dataset,
                "variant": name,
                "loss_kind": trainer.objective.loss_kind,
                "epoch": epoch,
                "loss": round(loss, 4),
                "valid_ndcg10": round(m["NDCG@10"], 4),
                "valid_hr10": round(m["HR@10"], 4),
                "cpu_s": round(time.process_time() - cpu0, 1),
                "train_cpu_s": round(train_cpu, 1),
                "wall_s": round(time.perf_counter() - wall0, 1),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            print(json.dumps(row), flush=True)
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if time.process_time() - cpu0 >= a.cpu_seconds:
                break


if __name__ == "__main__":
    main()
