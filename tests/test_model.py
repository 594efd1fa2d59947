"""The towers' module API: serving's one-state-per-user path equals the full sequence
encoding that training uses, for both encoders, every depth and every sequence length."""

from __future__ import annotations

import pytest
import torch

from training.model import TowerConfig, UserTower


@pytest.mark.parametrize(
    "encoder,layers", [("sasrec", 1), ("sasrec", 2), ("sasrec", 3), ("gru", 1)]
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_encode_last_is_the_full_encoding_at_each_rows_last_item(encoder, layers, mode):
    torch.manual_seed(0)
    # no dropout, so that in training mode neither path draws anything at random
    cfg = TowerConfig(n_items=30, dim=16, encoder=encoder, max_len=10, n_layers=layers, dropout=0.0)
    tower = UserTower(cfg).train(mode == "train")
    seq = torch.randn(6, 10, 16)
    lengths = torch.tensor([0, 1, 4, 9, 10, 10])
    seq[torch.arange(10)[None, :] >= lengths[:, None]] = 0.0  # right padding
    with torch.inference_mode(mode == "eval"):
        full = tower.encode_sequence(seq)[torch.arange(6), lengths]
        last = tower.encode_last(seq, lengths)
    assert last.shape == (6, 16)
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)
