"""``python -m training``: download MovieLens, train towers, write a bundle."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from training.data import DATASETS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train two-tower retrieval models and write artifact bundles.",
)
log = logging.getLogger("training")

Opt = typer.Option


@app.command()
def train(
    dataset: Annotated[str, Opt(help=f"One of: {', '.join(DATASETS)}.")] = None,
    data_dir: Annotated[Path, Opt(help="Directory with the dataset files.")] = None,
    encoder: Annotated[
        str,
        Opt(
            help="Sequence encoder(s): sasrec, gru, none; a comma "
            "list trains each and keeps the best on validation."
        ),
    ] = None,
    out: Annotated[
        Path,
        Opt(help="Artifacts root; the bundle goes to OUT/<version>, OUT/current points at it."),
    ] = Path("artifacts"),
    config: Annotated[
        Path, Opt(help="TOML file with any of these options (training ones in a [train] table).")
    ] = None,
    dim: Annotated[int, Opt(help="Embedding size of both towers.")] = None,
    max_len: Annotated[int, Opt(help="Recent items the sequence encoder sees.")] = None,
    n_layers: Annotated[int, Opt(help="Self-attention layers (sasrec).")] = None,
    dropout: Annotated[float, Opt(help="Dropout inside the towers.")] = None,
    user_id_embedding: Annotated[bool, Opt(help="Add a known-user id embedding.")] = None,
    members: Annotated[
        int,
        Opt(
            min=1,
            help="Train this many towers (seeds seed, seed+1, ...) and serve their "
            "ensemble: vectors concatenated, scores summed. Default: 2 when one tower is "
            "cheap to train, else 1 (derived from the data).",
        ),
    ] = None,
    epochs: Annotated[
        int,
        Opt(
            min=1,
            help="Maximum epochs (early stopping decides); an epoch visits every training "
            "position. Default: derived from the log's size (fewer for big logs).",
        ),
    ] = None,
    batch_size: Annotated[int, Opt(help="Users per step.")] = None,
    lr: Annotated[float, Opt(help="AdamW learning rate.")] = None,
    loss: Annotated[
        str, Opt(help="full | sampled | auto (full softmax up to 5,000 items, then sampled).")
    ] = None,
    patience: Annotated[
        int,
        Opt(
            min=1,
            help="Epochs without validation gain before stopping. Default: a tenth of the "
            "epoch budget.",
        ),
    ] = None,
    refit_epochs: Annotated[
        int,
        Opt(
            min=0,
            help="After early stopping, train the kept towers this many epochs more on "
            "train + validation (what the baselines are refit on before test); the served "
            "towers are these. 0 = off. Default: derived.",
        ),
    ] = None,
    label_smoothing: Annotated[
        float, Opt(min=0.0, max=0.5, help="Label smoothing of the softmax loss.")
    ] = None,
    mask_seen: Annotated[
        bool,
        Opt(
            help="Leave the user's earlier items out of each softmax, as evaluation and "
            "serving exclude them."
        ),
    ] = None,
    features_loss: Annotated[
        float,
        Opt(
            min=0.0,
            help="Weight of a second loss where the user features alone predict every item "
            "of the window (cold users); 0 = off.",
        ),
    ] = None,
    ema: Annotated[
        float,
        Opt(
            min=0.0,
            max=0.9999,
            help="Validate and keep an exponential moving average of the weights with this "
            "decay per step (0 = off).",
        ),
    ] = None,
    seed: Annotated[int, Opt(help="Random seed (runs are deterministic on CPU).")] = None,
    threads: Annotated[int, Opt(help="torch CPU threads.")] = None,
    baselines: Annotated[
        bool, Opt(help="Also evaluate popularity, item-kNN, EASE, Markov.")
    ] = None,
    if_changed: Annotated[
        bool,
        Opt(
            "--if-changed",
            help="Skip training when OUT/current was trained on the same data and config.",
        ),
    ] = False,
    resume: Annotated[
        bool, Opt("--resume", help="Continue from the last checkpoint in OUT/checkpoints.")
    ] = False,
    distributed: Annotated[
        bool, Opt("--distributed", help="Data-parallel training under torchrun (gloo on CPU).")
    ] = False,
    fallback_synthetic: Annotated[
        bool,
        Opt(
            "--fallback-synthetic",
            help="If MovieLens "
            "cannot be downloaded (offline), train on the "
            "synthetic dataset instead of failing.",
        ),
    ] = False,
    index: Annotated[
        str,
        Opt(
            help="Also build a FAISS index of this kind (flat, hnsw, "
            "ivf) into the bundle, unless it already has one."
        ),
    ] = None,
    progress: Annotated[bool, Opt(help="Show a progress bar.")] = True,
) -> None:
    """Train on a dataset, evaluate against baselines, write a versioned bundle."""
    from training.pipeline import RunConfig, init_distributed, run
    from training.train import TrainConfig

    flags = {
        k: v
        for k, v in locals().items()
        if v is not None and k not in ("fallback_synthetic", "index")
    }
    values = tomllib.loads(config.read_text()) if config else {}
    train_values = values.pop("train", {})
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in flags.items():
        (train_values if key in train_fields else values)[key] = value
    if "encoder" in values:
        values["encoders"] = [e.strip() for e in str(values.pop("encoder")).split(",")]
    if "data_dir" in values:
        values["data_dir"] = str(values["data_dir"])
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(
        **{k: v for k, v in values.items() if k in run_fields}, train=TrainConfig(**train_values)
    )
    if cfg.dataset not in DATASETS:
        raise typer.BadParameter(
            f"unknown dataset {cfg.dataset!r}; one of {DATASETS}", param_hint="--dataset"
        )
    if distributed:
        init_distributed()
    path = run(
        cfg,
        out,
        if_changed=if_changed,
        progress=progress,
        fallback=fallback_synthetic,
        checkpoint_dir=out / "checkpoints" if resume else None,
    )
    if index and path is not None:
        from index import build_index

        build_index(path, index, if_missing=True)


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="ml-100k, ml-1m or ml-20m")],
    dest: Annotated[Path, Opt(help="Where to extract the archive.")] = Path("data"),
) -> None:
    """Download a MovieLens archive from GroupLens and verify its checksum."""
    from training.data.download import DownloadError
    from training.data.download import download as fetch

    try:
        path = fetch(name, dest)
    except DownloadError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"{name} is ready in {path}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    app()
