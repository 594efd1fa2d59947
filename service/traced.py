"""The user tower as a TorchScript trace: the same computation, less Python per forward.

A cache miss runs the user tower on a micro-batch of a few short sequences. In eager
PyTorch most of that time is Python (module calls, mask and shape handling); the traced
graph runs the same kernels from C++: identical outputs, 1.7–2.3× faster per encode for
micro-batches of 1–32 short sequences on the ML-100K ensemble, 1.2–2.3× for full 50-item
windows, where the arithmetic weighs more (``python -m bench.tower``).
``torch.jit.trace`` is deprecated in favour of ``torch.export``, but an exported module
measured slower than eager here (2.0 vs 1.3 ms for one user); ``torch.compile`` was not
tried (it compiles per input shape and needs a C++ toolchain at run time). So the trace is
used while the pinned torch has it.

A trace records one path through the code. The engine always passes the same inputs (the
branches its tower has), so one graph is traced per loaded bundle, then checked against
the eager tower on inputs of other shapes (another batch size, an empty sequence). A
graph that fails or disagrees is not used: the eager tower answers and a warning says why.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from training.features import FeatureSpec

log = logging.getLogger("service.traced")

# what the user tower takes: features by name, item-vector sequences, lengths, user ids
Inputs = tuple[
    dict[str, torch.Tensor] | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None
]


class _Positional(nn.Module):
    """The tower with positional tensor arguments (what tracing takes)."""

    def __init__(self, tower: nn.Module, names: list[str], has: tuple[bool, bool, bool]):
        super().__init__()
        self.tower, self.names, self.has = tower, names, has

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.tower(*unflatten(args, self.names, self.has))


def flatten(inputs: Inputs, names: list[str]) -> tuple[torch.Tensor, ...]:
    feats, seq, lengths, user_ids = inputs
    out = [feats[n] for n in names] if feats is not None else []
    out += [seq, lengths] if seq is not None else []
    return (*out, *([user_ids] if user_ids is not None else []))


def unflatten(args, names: list[str], has: tuple[bool, bool, bool]) -> Inputs:
    it = iter(args)
    feats = {n: next(it) for n in names} if has[0] else None
    seq, lengths = (next(it), next(it)) if has[1] else (None, None)
    return feats, seq, lengths, next(it) if has[2] else None


def example(
    specs: list[FeatureSpec],
    has: tuple[bool, bool, bool],
    n: int,
    length: int,
    dim: int,
    users: int,
) -> Inputs:
    """Random valid inputs: n users, sequences of ``length`` (lengths from 0 to length)."""
    gen = torch.Generator().manual_seed(n * 100 + length)
    feats = None
    if has[0]:
        feats = {}
        for s in specs:
            shape = (n, 3) if s.kind == "multi" else (n,)
            feats[s.name] = torch.randint(0, s.cardinality, shape, generator=gen)
    seq = lengths = None
    if has[1]:
        seq = torch.randn(n, length, dim, generator=gen)
        lengths = torch.randint(0, length + 1, (n,), generator=gen)
    user_ids = torch.randint(0, users + 1, (n,), generator=gen) if has[2] else None
    return feats, seq, lengths, user_ids


class TracedTower:
    """Callable like the user tower (``feats, seq, lengths, user_ids``), for an engine that
    always passes the same kinds of input."""

    def __init__(
        self, tower: nn.Module, specs: list[FeatureSpec], dim: int, max_len: int, users: int
    ):
        self.tower = tower
        self.names = [s.name for s in specs]
        self.has = tuple(b is not None for b in (tower.features, tower.encoder, tower.user_ids))
        self.graph: torch.jit.ScriptModule | None = None
        self.reason = "not traced"
        try:
            self.graph = self._trace(specs, dim, max_len, users)
            self.reason = "traced"
        except Exception as e:  # noqa: BLE001 - any failure means: stay eager
            self.reason = f"{type(e).__name__}: {e}"
            log.warning("user tower not traced, running eager: %s", self.reason)

    def _trace(self, specs, dim: int, max_len: int, users: int) -> torch.jit.ScriptModule:
        module = _Positional(self.tower, self.names, self.has).eval()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation + "might not generalise": checked below
            first = flatten(example(specs, self.has, 4, 3, dim, users), self.names)
            graph = torch.jit.trace(module, first, check_trace=False)
            for n, length in ((1, 0), (7, max_len), (2, 1)):
                inputs = example(specs, self.has, n, length, dim, users)
                want, got = self.tower(*inputs), graph(*flatten(inputs, self.names))
                if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5):
                    raise ValueError(
                        f"traced output differs from eager (batch {n}, length {length})"
                    )
        return graph

    def __call__(self, feats, seq, lengths, user_ids) -> torch.Tensor:
        if self.graph is None:
            return self.tower(feats, seq, lengths, user_ids)
        return self.graph(*flatten((feats, seq, lengths, user_ids), self.names))
