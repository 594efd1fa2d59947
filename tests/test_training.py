"""Training through its public interface: the CLI, the bundle it writes, the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC_ARGS

from training import bundle, defaults
from training.model import feature_tensors

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    *("--epochs", "40", "--patience", "8", "--dim", "32", "--max-len", "20"),
    *("--members", "1", "--no-progress"),
]


def train_cli(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "training", "train", "--out", str(out), *args]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def test_synthetic_bundle_has_the_promised_files(trained_root):
    manifest = bundle.read_manifest(trained_root)
    bundle.verify(trained_root)
    names = set(manifest["files"])
    assert {
        bundle.MODEL_FILE,
        bundle.ITEM_EMBEDDINGS,
        bundle.ITEMS,
        bundle.USERS,
        bundle.POPULARITY,
        bundle.CURVE,
        bundle.REPORT_JSON,
        bundle.REPORT_MD,
    } <= names
    assert manifest["model"]["score"] == "inner_product"
    assert len(manifest["dataset"]["fingerprint"]) == 64
    emb = bundle.load_array(bundle.resolve(trained_root) / bundle.ITEM_EMBEDDINGS)
    assert emb.dtype == np.float32 and emb.shape == (
        manifest["dims"]["items"],
        manifest["dims"]["embedding"],
    )
    png = (bundle.resolve(trained_root) / bundle.CURVE).read_bytes()
    assert png.startswith(b"\x89PNG")


def test_towers_beat_popularity_by_a_wide_margin_on_synthetic(trained_root):
    report = bundle.load_json(trained_root, bundle.REPORT_JSON)
    assert report["protocol"] == "loo-full"
    models = report["models"]
    assert {
        "sasrec",
        "features-only",
        "sequence-only",
        "popularity",
        "item-knn",
        "ease",
        "markov",
    } <= set(models)
    pop = models["popularity"]["test"]["NDCG@10"]
    assert models[report["selected"]]["test"]["NDCG@10"] > 2 * pop
    assert models["features-only"]["test"]["NDCG@10"] > 1.2 * pop
    for entry in models.values():
        assert {"HR@10", "NDCG@10", "Recall@20", "MRR", "Coverage@10"} <= set(entry["test"])
        assert {"HR@10", "NDCG@10"} <= set(entry["sampled100"])
    assert "Sampled protocol" in (bundle.resolve(trained_root) / bundle.REPORT_MD).read_text()


def test_every_inference_mode_gives_finite_vectors(trained_root):
    model = bundle.load_towers(trained_root)
    cfg = model.cfg
    users = bundle.load_json(trained_root, bundle.USERS)[:4]
    feats = feature_tensors(cfg.specs("user"), [u["features"] for u in users])
    seq = torch.randn(4, 7, cfg.dim)
    lengths = torch.tensor([7, 3, 1, 0])
    with torch.inference_mode():
        for args in ((feats, None, None), (None, seq, lengths), (feats, seq, lengths)):
            vectors = model.user_tower(*args)
            assert vectors.shape == (4, cfg.dim) and torch.isfinite(vectors).all()


def test_if_changed_does_not_retrain(trained_root, tmp_path):
    import shutil

    root = tmp_path / "artifacts"
    shutil.copytree(trained_root, root, symlinks=True)
    before = bundle.resolve(root)
    result = train_cli(root, *SYNTHETIC_ARGS, "--if-changed")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr
    assert bundle.resolve(root) == before


def test_corrupt_bundle_file_is_named(trained_root, tmp_path):
    import shutil

    root = tmp_path / "artifacts"
    shutil.copytree(trained_root, root, symlinks=True)
    weights = bundle.resolve(root) / bundle.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(bundle.BundleError, match="model.safetensors"):
        bundle.load_towers(root)


def test_malformed_data_names_file_and_line(tmp_path):
    data = tmp_path / "ml"
    data.mkdir()
    (data / "u.data").write_text("1\t1\t5\t881250949\n1\tx\t3\t881250950\n")
    (data / "u.user").write_text("1|24|M|technician|85711\n")
    (data / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||url" + "|0" * 19 + "\n")
    result = train_cli(tmp_path / "out", "--dataset", "ml-100k", "--data-dir", str(data))
    assert result.returncode != 0
    assert "u.data:2" in result.stderr
    assert not (tmp_path / "out" / "current").exists()


def test_ml100k_smoke_run_beats_popularity(tmp_path, ml100k):
    result = train_cli(
        tmp_path / "out",
        "--dataset",
        "ml-100k",
        "--data-dir",
        str(ml100k),
        "--epochs",
        "12",
        "--patience",
        "12",
        "--members",
        "1",
        "--no-baselines",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = bundle.load_json(tmp_path / "out", bundle.REPORT_JSON)
    assert report["n_users"] == 943 and report["n_items"] == 1682
    # popularity on this protocol: HR@10 0.086 / NDCG@10 0.045 (tests/test_baselines.py)
    assert report["models"]["sasrec"]["test"]["NDCG@10"] > 0.05


def test_two_process_ddp_matches_single_process(tmp_path):
    args = ["--dataset", "synthetic", "--encoder", "gru", "--no-baselines", *QUICK]
    single = train_cli(tmp_path / "single", *args)
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training",
        "train",
        "--out",
        str(tmp_path / "ddp"),
        "--distributed",
        "--threads",
        "1",
        *args,
        "--batch-size",
        "64",
    ]  # 2 ranks x 64 = the single batch
    ddp = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "rank 1 of 2" in ddp.stderr
    one = bundle.load_json(tmp_path / "single", bundle.REPORT_JSON)["models"]["gru"]["test"]
    two = bundle.load_json(tmp_path / "ddp", bundle.REPORT_JSON)["models"]["gru"]["test"]
    assert two["NDCG@10"] == pytest.approx(one["NDCG@10"], rel=0.15)


@pytest.mark.parametrize("extra", [[], ["--ema", "0.9", "--members", "2"]], ids=["plain", "ema"])
def test_resume_continues_exactly_where_it_stopped(tmp_path, extra):
    """Deterministic on CPU: 2 + 2 resumed epochs give the same weights as 4 straight
    (with --ema, the running average and every ensemble member's checkpoint too)."""
    args = [
        *extra,
        "--dataset",
        "synthetic",
        "--no-baselines",
        "--dim",
        "16",
        "--max-len",
        "10",
        "--no-progress",
        "--patience",
        "99",
        "--threads",
        "1",
        "--resume",
    ]
    straight = train_cli(tmp_path / "straight", *args, "--epochs", "4")
    assert straight.returncode == 0, straight.stderr[-3000:]
    for epochs in ("2", "4"):
        part = train_cli(tmp_path / "resumed", *args, "--epochs", epochs)
        assert part.returncode == 0, part.stderr[-3000:]
    assert "resumed from" in part.stderr
    a, b = (
        bundle.load_array(bundle.resolve(tmp_path / d) / bundle.ITEM_EMBEDDINGS)
        for d in ("straight", "resumed")
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sampled_softmax_trains_a_useful_model(tmp_path):
    result = train_cli(
        tmp_path / "out", "--dataset", "synthetic", "--loss", "sampled", "--encoder", "gru", *QUICK
    )
    assert result.returncode == 0, result.stderr[-3000:]
    models = bundle.load_json(tmp_path / "out", bundle.REPORT_JSON)["models"]
    assert models["gru"]["test"]["NDCG@10"] > 2 * models["popularity"]["test"]["NDCG@10"]


def test_members_train_an_ensemble_that_serves_as_one_model(tmp_path):
    """--members 2: two towers (seeds 0 and 1), one bundle whose vectors are the members'
    concatenated, so the served inner product is the sum of the members' scores."""
    import asyncio

    from test_service_support import serve, settings

    from index import build_index
    from service.engine import Engine, Query

    args = ["--dataset", "synthetic", "--encoder", "sasrec", "--epochs", "3", "--dim", "16"]
    r = train_cli(tmp_path, *args, "--members", "2", "--no-progress", "--no-baselines")
    assert r.returncode == 0, r.stderr
    current = bundle.resolve(tmp_path)
    manifest = bundle.read_manifest(current)
    assert manifest["model"]["members"] == 2 and manifest["dims"]["embedding"] == 32
    report = bundle.load_json(current, bundle.REPORT_JSON)
    assert report["models"]["sasrec"]["epochs"] == [3, 3]

    model = bundle.load_towers(current)
    items = bundle.load_json(current, bundle.ITEMS)
    feats = feature_tensors(model.cfg.specs("item"), [it["features"] for it in items])
    ids = torch.arange(1, len(items) + 1)
    seq_ids = torch.tensor([[4, 9, 2, 0], [7, 1, 0, 0]])
    lengths = torch.tensor([3, 2])
    with torch.inference_mode():
        item_vectors = model.item_tower(ids, feats)
        users = model.user_tower(seq=item_vectors[seq_ids], lengths=lengths)
        summed = sum(
            member_user(seq=member_item(ids, feats)[seq_ids], lengths=lengths)
            @ member_item(ids, feats).T
            for member_user, member_item in zip(
                model.user_tower.members, model.item_tower.members, strict=True
            )
        )
    assert torch.allclose(users @ item_vectors.T, summed, atol=1e-5)

    build_index(current)
    engine = Engine(current)
    vector = engine.encode([Query(features={}, sequence=[4, 9, 2])])
    assert vector.shape == (1, 32)

    async def recommend() -> dict:
        async with serve(settings(tmp_path)) as (client, _):
            r = await client.post("/recommend", json={"recent_items": [items[4]["id"]], "k": 5})
            assert r.status_code == 200, r.text
            return r.json()

    body = asyncio.run(recommend())
    assert body["strategy"] == "sequence" and len(body["items"]) == 5


def test_features_loss_adds_the_features_alone_objective():
    """--features-loss w: the batch loss is the usual one plus w times the same loss with
    every user's feature vector alone at every position (same branch draws, no dropout)."""
    from training.data import load_dataset
    from training.model import TwoTower
    from training.pipeline import Run, RunConfig
    from training.train import NextItemObjective, TrainConfig

    run = Run(load_dataset("synthetic"), RunConfig(dim=16, max_len=8))
    torch.manual_seed(0)
    model = TwoTower(run.tower_config("gru")).eval()
    users = torch.tensor([0, 1, 2])
    targets = torch.tensor([[3, 5, 7, -1], [2, 9, 4, 6], [8, 1, -1, -1]])

    def batch_loss(features_loss: float) -> torch.Tensor:
        cfg = TrainConfig(features_loss=features_loss, branch_dropout=0.0, mask_seen=False)
        objective = NextItemObjective(model, run.item_feats, run.user_feats, None, cfg, seed=0)
        return objective.eval()(users, targets)

    feats = {k: v[users] for k, v in run.user_feats.items()}
    with torch.no_grad():
        items = model.item_tower(torch.arange(1, model.cfg.n_items + 1), run.item_feats)
        cold = model.user_tower.encode_features(feats)
        valid = targets >= 0
        alone = torch.nn.functional.cross_entropy(
            cold[:, None, :].expand(*targets.shape, -1)[valid] @ items.T, targets[valid]
        )
        assert batch_loss(0.5) == pytest.approx(float(batch_loss(0.0) + 0.5 * alone), rel=1e-5)


def test_the_softmax_leaves_out_what_the_user_had_before_each_position():
    """Hand-made windows: position t of a row masks the row's items before the window and
    at positions < t, but never its own target (a repeated item)."""
    from training.data import load_dataset
    from training.model import TwoTower
    from training.pipeline import Run, RunConfig
    from training.train import NextItemObjective, TrainConfig

    run = Run(load_dataset("synthetic"), RunConfig(dim=16, max_len=8))
    model = TwoTower(run.tower_config("gru"))
    objective = NextItemObjective(model, run.item_feats, run.user_feats, None, TrainConfig(), 0)
    targets = torch.tensor([[3, 5, 3, -1], [2, 9, 4, 6]])
    earlier = torch.tensor([[1], [7]])  # row 1 had item 7 before its window
    mask = objective.seen_mask(targets, earlier, torch.arange(model.cfg.n_items))
    masked = [set(torch.nonzero(row).flatten().tolist()) for row in mask]
    assert masked == [set(), {3}, {5}, {7}, {7, 2}, {7, 2, 9}, {7, 2, 9, 4}]
    # a sampled candidate set: the same mask on those columns
    candidates = torch.tensor([2, 3, 4, 5, 6, 9])
    sampled = objective.seen_mask(targets, earlier, candidates)
    assert torch.equal(sampled, mask[:, candidates])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_cross_entropy_is_the_cross_entropy_over_the_rows_classes(smoothing):
    from training.losses import softmax_cross_entropy

    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 0.2, 0.1, 3.0]])
    labels = torch.tensor([1, 0])
    mask = torch.tensor([[True, False, False, True], [False, False, False, False]])
    by_hand = [
        torch.nn.functional.cross_entropy(
            logits[0, [1, 2]][None], torch.tensor([0]), label_smoothing=smoothing
        ),
        torch.nn.functional.cross_entropy(logits[1][None], labels[1:], label_smoothing=smoothing),
    ]
    got = softmax_cross_entropy(logits, labels, smoothing, mask)
    assert float(got) == pytest.approx(float(sum(by_hand) / 2), rel=1e-6)
    unmasked = softmax_cross_entropy(logits, labels, smoothing, None)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)
    assert float(unmasked) == pytest.approx(float(expected))


def test_label_smoothing_and_features_loss_through_the_cli(tmp_path):
    result = train_cli(
        tmp_path, "--dataset", "synthetic", *QUICK, "--encoder", "gru",
        "--label-smoothing", "0.1", "--features-loss", "1.0", "--no-mask-seen",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    train_cfg = bundle.read_manifest(bundle.resolve(tmp_path))["config"]["train"]
    assert (train_cfg["label_smoothing"], train_cfg["features_loss"]) == (0.1, 1.0)
    assert train_cfg["mask_seen"] is False
    # what the command line left unset was derived from the data, and says so
    config = bundle.read_manifest(bundle.resolve(tmp_path))["config"]
    from training.data import load_dataset

    shape = defaults.DataShape.of(load_dataset("synthetic"))
    refit = defaults.refit_epochs(shape, 40)  # of --epochs 40
    assert config["derived"] == {"loss": "full", "item_id_dropout": 0.05, "refit_epochs": refit}
    assert train_cfg["loss"] == "full" and train_cfg["epochs"] == 40
    models = bundle.load_json(tmp_path, bundle.REPORT_JSON)["models"]
    pop = models["popularity"]["test"]["NDCG@10"]
    assert models["gru"]["test"]["NDCG@10"] > 2 * pop
    assert models["features-only"]["test"]["NDCG@10"] > 1.2 * pop
    bad = train_cli(tmp_path / "bad", "--dataset", "synthetic", "--label-smoothing", "0.9")
    assert bad.returncode != 0 and "--label-smoothing" in bad.stderr


def test_an_epoch_visits_every_training_position_once_in_windows_of_similar_length():
    from training.train import Batcher

    sequences = [np.arange(100, 112), np.arange(200, 203), np.arange(0), np.arange(300, 305)]
    batcher = Batcher(sequences, max_len=4, seed=0)  # windows of 5 targets
    users = np.array([0, 1, 3])
    seen, widths = [], []
    for batch in batcher.epoch(users, batch_size=2):
        targets, earlier = batch["targets"].numpy(), batch["earlier"].numpy()
        widths.append(targets.shape[1])
        for row, u in enumerate(batch["users"].tolist()):
            window = targets[row][targets[row] >= 0]
            seq = sequences[u].tolist()
            start = seq.index(window[0])
            assert window.tolist() == seq[start : start + len(window)]
            assert earlier[1][earlier[0] == row].tolist() == seq[:start]  # everything before
            seen += window.tolist()
    assert sorted(seen) == sorted(np.concatenate([sequences[u] for u in users]).tolist())
    # user 0: [107..111] (the latest window, what serving feeds), [102..106], [100, 101]
    starts = sorted(s for u, s, _ in zip(*batcher.windows(users), strict=True) if u == 0)
    assert starts == [0, 2, 7]
    assert sorted(widths) == [3, 5, 5]  # lengths 2, 3 | 5, 5 | 5: batched by length


def test_the_loss_over_real_positions_is_the_padded_batchs_loss_computed_the_old_way():
    """The objective scores only real (non-padding) positions; computing the logits at
    every position of the padded batch and ignoring the padding gives the same loss."""
    from training.data import load_dataset
    from training.model import TwoTower
    from training.pipeline import Run, RunConfig
    from training.train import NextItemObjective, TrainConfig

    run = Run(load_dataset("synthetic"), RunConfig(dim=16, max_len=8))
    torch.manual_seed(0)
    model = TwoTower(run.tower_config("sasrec")).eval()
    cfg = TrainConfig(branch_dropout=0.0, item_id_dropout=0.0, mask_seen=False, loss="full")
    objective = NextItemObjective(model, run.item_feats, run.user_feats, None, cfg, seed=0)
    users = torch.tensor([0, 1, 2])
    targets = torch.tensor([[3, 5, 7, -1, -1], [2, 9, 4, 6, 1], [8, -1, -1, -1, -1]])
    with torch.no_grad():
        got = objective.eval()(users, targets)
        items = model.item_tower(torch.arange(1, model.cfg.n_items + 1), run.item_feats)
        inputs = targets[:, :-1]
        seq = items[inputs.clamp(min=0)] * (inputs >= 0).unsqueeze(-1)
        states = model.user_tower.encode_sequence(seq)  # [B, W, d]: padding included
        feats = {k: v[users] for k, v in run.user_feats.items()}
        states = states + model.user_tower.encode_features(feats)[:, None, :]
        logits = states @ items.T  # [B, W, n_items]
        expected = torch.nn.functional.cross_entropy(
            logits.reshape(-1, model.cfg.n_items), targets.reshape(-1), ignore_index=-1
        )
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_refit_serves_towers_that_also_learned_the_validation_items(tmp_path):
    """--refit-epochs N: validation is scored by the early-stopped towers (identical to a
    run without refit), test and the bundle by the towers refit on train + validation."""
    from training.data import load_dataset
    from training.metrics import evaluate
    from training.pipeline import Run, RunConfig
    from training.scoring import TowerScorer

    small = ["--dataset", "synthetic", "--epochs", "6", "--patience", "6", "--dim", "16"]
    small += ["--max-len", "10", "--members", "1", "--no-baselines", "--no-progress"]
    reports = {}
    for n in (0, 2):
        result = train_cli(tmp_path / str(n), *small, "--refit-epochs", str(n))
        assert result.returncode == 0, result.stderr[-3000:]
        reports[n] = bundle.load_json(tmp_path / str(n), bundle.REPORT_JSON)["models"]["sasrec"]
    assert reports[2]["refit_epochs"] == 2 and reports[0]["refit_epochs"] == 0
    assert reports[2]["valid"] == reports[0]["valid"]
    assert reports[2]["test"]["NDCG@10"] != reports[0]["test"]["NDCG@10"]
    # the bundle holds the towers whose test row the report shows
    run = Run(load_dataset("synthetic"), RunConfig())
    for n in (0, 2):
        served = bundle.load_towers(tmp_path / str(n))
        scorer = TowerScorer(served, run.item_feats, run.user_feats, "combined")
        got = evaluate(scorer, run.split, "test")["full"]["NDCG@10"]
        assert got == pytest.approx(reports[n]["test"]["NDCG@10"], abs=1e-6)
