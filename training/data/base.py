"""The in-memory form every loader returns, whatever the source format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.features import Kind


@dataclass
class FeatureColumn:
    """How a raw attribute column is to be encoded (vocabularies are fitted later)."""

    name: str
    kind: Kind
    boundaries: list[float] = field(default_factory=list)
    prefix: int | None = None


@dataclass
class Dataset:
    """Interactions plus optional user and item attributes.

    Internal ids are dense: user ``u`` is ``user_ids[u]``, item ``i`` is ``item_ids[i]``;
    external ids are strings (MovieLens ids as decimal strings, e.g. "50").
    The interaction arrays keep the source file order, which the split uses to break
    timestamp ties.
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray  # int64[n] internal user id per interaction
    items: np.ndarray  # int64[n] internal item id per interaction
    timestamps: np.ndarray  # int64[n]
    user_features: list[dict[str, Any]] = field(default_factory=list)  # per user, raw values
    item_features: list[dict[str, Any]] = field(default_factory=list)  # per item, raw values
    user_columns: list[FeatureColumn] = field(default_factory=list)
    item_columns: list[FeatureColumn] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)  # per item; "" when unknown
    source: str = ""  # where it was read from (path or "synthetic(seed=...)")
    weights: np.ndarray | None = None  # float32[n] per interaction, when the source has them

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def fingerprint(self) -> str:
        """SHA-256 over ids and interactions: identifies the data a bundle was trained on."""
        import hashlib

        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update("\x1f".join(self.user_ids).encode())
        h.update("\x1f".join(self.item_ids).encode())
        for arr in (self.users, self.items, self.timestamps):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(repr(self.user_features).encode())
        h.update(repr(self.item_features).encode())
        if self.weights is not None:
            h.update(np.ascontiguousarray(self.weights, dtype=np.float32).tobytes())
        return h.hexdigest()


class DataFormatError(ValueError):
    """A malformed input file: names the file and the line (or column) at fault."""

    def __init__(self, path: Any, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line
