"""Retrieval losses over inner-product scores.

``full``: softmax cross-entropy over the whole catalog (cheap for catalogs up to ~20k
items, and what makes SASRec-style models strong on MovieLens).
``sampled``: softmax over the batch's own target items (in-batch negatives, drawn in
proportion to popularity) plus uniform random negatives, with the logQ correction
(subtract log of each candidate's sampling probability) so the estimate stays unbiased
towards popular items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FULL_SOFTMAX_MAX_ITEMS = 20_000


def choose(loss: str, n_items: int) -> str:
    if loss != "auto":
        return loss
    return "full" if n_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"


def full_softmax(
    users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """users [P, d], items [n_items, d], targets [P] (0-based item ids). ``smoothing``:
    label smoothing (the target keeps 1 - smoothing, the rest is spread evenly)."""
    return F.cross_entropy(users @ items.T, targets, label_smoothing=smoothing)


def sampled_softmax(
    users: torch.Tensor,
    candidate_vectors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    item_freq: torch.Tensor,
    n_uniform: int,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """users [P, d]; candidates [C] sorted unique item ids containing every target, with
    their vectors [C, d]; item_freq [n_items] training frequencies (sums to 1);
    ``smoothing`` spreads over the candidates."""
    n_items = item_freq.numel()
    expected = len(targets) * item_freq[candidates] + n_uniform / n_items
    logits = users @ candidate_vectors.T - torch.log(expected.clamp(max=1.0))
    labels = torch.searchsorted(candidates, targets)
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)
