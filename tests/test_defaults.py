"""The derived-settings rule (training/defaults.py) on hand-made data shapes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from training import defaults
from training.data.base import Dataset
from training.defaults import DataShape, derive, resolve
from training.pipeline import RunConfig
from training.train import TrainConfig


def shape(
    users: int, items: int, per_user: float, median: float, item_features: bool = False
) -> DataShape:
    interactions = int(users * per_user)
    return DataShape(users, items, interactions, interactions - 2 * users, median, item_features)


ML100K = shape(943, 1682, 106, 60, item_features=True)  # few users, long histories, genres
BEAUTY = shape(22_363, 12_101, 8.9, 4)  # many users, short histories, 12k items, no features
ML20M = shape(138_000, 27_000, 145, 66)  # a big log


def test_a_small_catalog_with_long_histories_gets_the_full_softmax_and_an_ensemble():
    got = derive(ML100K)
    assert got == {
        "loss": "full",
        "epochs": 51,
        "patience": 6,
        "members": 2,
        "item_id_dropout": defaults.ITEM_ID_DROPOUT,
        "refit_epochs": 1,
    }


def test_a_large_catalog_gets_the_sampled_softmax_and_a_single_tower():
    got = derive(BEAUTY)
    assert got["loss"] == "sampled"
    assert got["members"] == 1  # one member's budget is already costly
    assert got["epochs"] == round(defaults.POSITION_PASSES / BEAUTY.positions) == 32


def test_big_logs_make_few_passes_and_tiny_ones_are_capped():
    big = derive(ML20M)
    assert (big["epochs"], big["patience"], big["members"]) == (defaults.MIN_EPOCHS, 3, 1)
    tiny = derive(shape(50, 40, 10, 8))
    assert tiny["epochs"] == defaults.MAX_EPOCHS and tiny["patience"] == 20
    assert tiny["loss"] == "full"


def test_the_epoch_budget_shrinks_as_the_log_grows():
    epochs = [derive(shape(u, 5000, 30, 28))["epochs"] for u in (2_000, 20_000, 200_000)]
    assert epochs[0] > epochs[1] > epochs[2]
    assert epochs[1] == pytest.approx(epochs[0] / 10, abs=1)  # passes x positions fixed


def test_item_id_dropout_only_where_item_features_can_stand_in_for_the_id():
    assert derive(BEAUTY)["item_id_dropout"] == 0.0
    assert derive(ML100K)["item_id_dropout"] == defaults.ITEM_ID_DROPOUT > 0
    assert derive(replace(BEAUTY, item_features=True))["item_id_dropout"] > 0


def test_shape_counts_training_positions_as_leave_one_out_leaves_them():
    users = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])  # 4, 2 and 3 interactions
    ds = Dataset(
        name="hand",
        users=users,
        items=np.arange(9) % 5,
        timestamps=np.arange(9),
        user_ids=["a", "b", "c"],
        item_ids=[str(i) for i in range(5)],
    )
    got = DataShape.of(ds)
    # user 1 (2 interactions) is not evaluated and keeps both for training
    assert (got.positions, got.median_history, got.n_interactions) == (2 + 2 + 1, 2.0, 9)
    assert got.item_features is False


def test_resolve_fills_only_what_the_user_left_unset_and_says_what_it_derived():
    cfg = RunConfig(members=3, train=TrainConfig(epochs=7, loss="full"))
    got = resolve(cfg, BEAUTY)
    assert (got.members, got.train.epochs, got.train.loss) == (3, 7, "full")
    assert got.derived == {
        "patience": 4,
        "item_id_dropout": 0.0,
        "refit_epochs": 2,  # 2 passes x the user's 7 epochs x 15 % new positions
    }
    assert got.train.patience == 4
    assert resolve(got, BEAUTY) == got  # idempotent


def test_the_refit_lasts_in_proportion_to_the_positions_it_adds():
    # amazon-beauty: one validation item per user is 15 % of the training positions
    beauty = replace(BEAUTY, evaluated=BEAUTY.n_users)
    share = beauty.n_users / beauty.positions
    assert derive(beauty)["refit_epochs"] == round(defaults.REFIT_PASSES * 32 * share) == 9
    assert derive(ML100K)["refit_epochs"] == 1  # 1 % new positions: one epoch
    assert derive(ML20M)["refit_epochs"] == 1
    assert derive(beauty, epochs=64)["refit_epochs"] == 19  # a share of the user's budget
    assert derive(replace(beauty, evaluated=beauty.n_users // 2))["refit_epochs"] == 5
