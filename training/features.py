"""Feature schema: how raw user/item attributes become integer ids for the towers.

Shared by training (which fits the vocabularies) and the service (which encodes
request features with the vocabularies stored in the bundle manifest). Pure Python.

Kinds:
- ``categorical``: one string value -> vocabulary index. ``prefix`` keeps only the
  first characters (MovieLens zip codes use 1: the region).
- ``bucket``: one number -> index of the bucket given by sorted ``boundaries``.
- ``multi``: a list of strings -> a bag of vocabulary indices (genres).

Index 0 is always the *unknown / missing* bucket, so any value seen at serving time
that training never saw maps to 0 and is reported, never an error.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

UNKNOWN = 0
Kind = Literal["categorical", "bucket", "multi"]


@dataclass
class FeatureSpec:
    name: str
    kind: Kind
    vocab: list[str] = field(default_factory=list)  # categorical / multi; index = position + 1
    boundaries: list[float] = field(default_factory=list)  # bucket
    prefix: int | None = None  # categorical: keep only the first `prefix` characters

    @property
    def cardinality(self) -> int:
        """Number of embedding rows needed, unknown bucket included."""
        if self.kind == "bucket":
            return len(self.boundaries) + 2
        return len(self.vocab) + 1

    def _key(self, value: Any) -> str:
        text = str(value).strip()
        return text[: self.prefix] if self.prefix else text

    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup")
        if cached is None:
            cached = {v: i + 1 for i, v in enumerate(self.vocab)}
            self.__dict__["_lookup"] = cached
        return cached

    def encode(self, value: Any) -> tuple[list[int], bool]:
        """Return (indices, known). Missing values encode to [UNKNOWN] and count as known."""
        if value is None or value == "" or value == []:
            return [UNKNOWN], True
        if self.kind == "bucket":
            try:
                number = float(value)
            except (TypeError, ValueError):
                return [UNKNOWN], False
            return [1 + bisect.bisect_right(self.boundaries, number)], True
        values = value if self.kind == "multi" and isinstance(value, (list, tuple)) else [value]
        lookup = self._index()
        ids = [lookup.get(self._key(v), UNKNOWN) for v in values]
        return ids, UNKNOWN not in ids

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])} | {
            "name": self.name,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            name=data["name"],
            kind=data["kind"],
            vocab=list(data.get("vocab", [])),
            boundaries=[float(b) for b in data.get("boundaries", [])],
            prefix=data.get("prefix"),
        )

    @classmethod
    def fit(
        cls,
        name: str,
        kind: Kind,
        values: Iterable[Any],
        *,
        boundaries: Sequence[float] = (),
        prefix: int | None = None,
    ) -> FeatureSpec:
        """Build the vocabulary from training values (sorted, so it is deterministic)."""
        spec = cls(
            name=name, kind=kind, boundaries=sorted(float(b) for b in boundaries), prefix=prefix
        )
        if kind != "bucket":
            seen: set[str] = set()
            for value in values:
                if value is None or value == "":
                    continue
                items = value if kind == "multi" and isinstance(value, (list, tuple)) else [value]
                seen.update(spec._key(v) for v in items if v not in (None, ""))
            spec.vocab = sorted(seen)
        return spec


def encode_rows(specs: Sequence[FeatureSpec], rows: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Encode per-row raw feature dicts into per-feature index lists (bags for ``multi``)."""
    out: dict[str, list] = {s.name: [] for s in specs}
    for row in rows:
        for spec in specs:
            ids, _ = spec.encode(row.get(spec.name))
            out[spec.name].append(ids if spec.kind == "multi" else ids[0])
    return out
