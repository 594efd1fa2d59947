"""Retrieval losses over inner-product scores.

``full``: softmax cross-entropy over the whole catalog (what makes SASRec-style models
strong on MovieLens; its cost grows with positions x catalog size).
``sampled``: softmax over the batch's own target items (in-batch negatives, drawn in
proportion to popularity) plus uniform random negatives, with the logQ correction
(subtract log of each candidate's sampling probability) so the estimate stays unbiased
towards popular items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Above this the sampled softmax is the default (training/defaults.py says why).
FULL_SOFTMAX_MAX_ITEMS = 5_000


def choose(loss: str, n_items: int) -> str:
    if loss != "auto":
        return loss
    return "full" if n_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"


def softmax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smoothing: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of [P, C] logits; ``mask`` [P, C] True = not a class for that
    row. ``smoothing``: the label keeps 1 - smoothing, the rest is spread evenly over the
    row's classes (F.cross_entropy's label smoothing, restricted to unmasked classes)."""
    if mask is None:
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)
    logp = logits.masked_fill(mask, float("-inf")).log_softmax(-1)
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    if smoothing:
        spread = -logp.masked_fill(mask, 0.0).sum(-1) / (~mask).sum(-1)
        nll = (1 - smoothing) * nll + smoothing * spread
    return nll.mean()


def full_softmax(
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    smoothing: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """users [P, d], items [n_items, d], targets [P] (0-based item ids); ``mask`` [P,
    n_items] True = left out of that row's softmax."""
    return softmax_cross_entropy(users @ items.T, targets, smoothing, mask)


def sampled_softmax(
    users: torch.Tensor,
    candidate_vectors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    item_freq: torch.Tensor,
    n_uniform: int,
    smoothing: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """users [P, d]; candidates [C] sorted unique item ids containing every target, with
    their vectors [C, d]; item_freq [n_items] training frequencies (sums to 1);
    ``mask`` [P, C] True = left out of that row's softmax."""
    n_items = item_freq.numel()
    expected = len(targets) * item_freq[candidates] + n_uniform / n_items
    logits = users @ candidate_vectors.T - torch.log(expected.clamp(max=1.0))
    labels = torch.searchsorted(candidates, targets)
    return softmax_cross_entropy(logits, labels, smoothing, mask)
