"""Leave-one-out split: time order, the file-order tie rule, no leakage."""

from __future__ import annotations

import numpy as np

from training.data.base import Dataset
from training.data.synthetic import generate
from training.split import leave_one_out, shift_back


def dataset(users, items, timestamps, n_users=None, n_items=10) -> Dataset:
    n_users = n_users or max(users) + 1
    return Dataset(
        name="t",
        user_ids=[str(u) for u in range(n_users)],
        item_ids=[str(i) for i in range(n_items)],
        users=np.array(users),
        items=np.array(items),
        timestamps=np.array(timestamps),
    )


def test_last_is_test_second_last_is_valid():
    # user 0 out of time order in the file; user 1 too short; user 2 never interacts
    ds = dataset([0, 0, 1, 0, 0, 1], [5, 3, 7, 1, 2, 8], [40, 20, 1, 10, 30, 2], n_users=3)
    split = leave_one_out(ds)
    assert split.n_items == 10 and split.n_users == 3
    assert split.train[0].tolist() == [1, 3] and split.valid[0] == 2 and split.test[0] == 5
    assert split.train[1].tolist() == [7, 8] and split.valid[1] == -1 and split.test[1] == -1
    assert split.train[2].tolist() == []
    assert split.eval_users("valid").tolist() == [0] and split.eval_users("test").tolist() == [0]
    assert split.history("valid")[0].tolist() == [1, 3]
    assert split.history("test")[0].tolist() == [1, 3, 2]
    assert split.history("test")[1].tolist() == [7, 8]


def test_equal_timestamps_keep_file_order():
    ds = dataset([0, 0, 0, 0], [4, 9, 6, 1], [5, 5, 5, 1])
    split = leave_one_out(ds)
    assert split.train[0].tolist() == [1, 4] and split.valid[0] == 9 and split.test[0] == 6


def test_no_leakage_on_synthetic_data():
    ds = generate(n_users=200, n_items=100, min_length=2, max_length=12, seed=3)
    split = leave_one_out(ds)
    counts = np.bincount(ds.users, minlength=ds.n_users)
    assert set(split.eval_users("test")) == set(np.flatnonzero(counts >= 3))
    for u in split.eval_users("test"):
        assert split.test[u] not in split.history("test")[u]
        assert split.test[u] not in split.history("valid")[u]
        assert split.valid[u] not in split.history("valid")[u]
        last = np.flatnonzero(ds.users == u)[np.argmax(ds.timestamps[ds.users == u])]
        assert split.test[u] == ds.items[last]
    total = sum(len(t) for t in split.train) + (split.valid >= 0).sum() + (split.test >= 0).sum()
    assert total == len(ds.users)


def test_shift_back_moves_every_target_one_item_earlier():
    # user 0: five items; user 1: one training item; user 2: too short to be evaluated
    ds = dataset([0] * 5 + [1] * 3 + [2] * 2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0], list(range(10)))
    split = leave_one_out(ds)
    shifted = shift_back(split)
    assert shifted.train[0].tolist() == [1, 2] and shifted.valid[0] == 3 and shifted.test[0] == 4
    # predicting the stand-in test item sees exactly the real training items
    assert shifted.history("test")[0].tolist() == split.train[0].tolist() == [1, 2, 3]
    assert shifted.train[1].tolist() == [6] and shifted.valid[1] == shifted.test[1] == -1
    assert shifted.train[2].tolist() == [9, 0] and shifted.valid[2] == shifted.test[2] == -1
    # the real test items are nowhere in it
    seen = np.concatenate([*shifted.history("test"), shifted.valid, shifted.test])
    assert 5 not in seen and 8 not in seen
