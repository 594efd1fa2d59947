"""The two towers. Pure torch: the service rebuilds them from the bundle with this file only.

Score(user, item) = <user_tower(user), item_tower(item)>, exactly what a FAISS
inner-product index computes.

Item tower: item-id embedding + item-feature embeddings -> residual MLP -> d.
Id 0 is the unknown item, so a new item is embedded from its features alone.

User tower: the sum of up to three branches, any of which may be absent:
  features  categorical user features -> MLP -> d
  sequence  the recent items' *item-tower vectors* (shared with the item side), behind a
            learned BOS vector, through a GRU (GRU4Rec-style) or causal self-attention
            (SASRec-style); in training every position predicts the next item, while
            the forward pass computes only each user's last state (``encode_last``)
  user id   an embedding for users known at training time (classic DSSM/NCF)
Ensemble (``members > 1``): independently trained towers whose vectors are concatenated,
so their scores add up under one inner product.
Sequences are right-padded: both encoders are causal, so a valid position never sees the
padding after it and no padding mask is needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from training.features import FeatureSpec

Encoder = Literal["sasrec", "gru", "none"]


@dataclass
class TowerConfig:
    n_items: int
    n_users: int = 0
    dim: int = 64
    encoder: Encoder = "sasrec"
    max_len: int = 50  # recent items fed to the sequence encoder
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    user_id_embedding: bool = False
    user_features: list[dict] = field(default_factory=list)  # FeatureSpec.to_dict()
    item_features: list[dict] = field(default_factory=list)
    members: int = 1  # > 1: an ensemble of independently trained towers (see Ensemble)

    @property
    def vector_dim(self) -> int:
        """Size of the vectors the towers output (what the index and the cache hold)."""
        return self.dim * self.members

    def member(self) -> TowerConfig:
        return replace(self, members=1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TowerConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def specs(self, side: Literal["user", "item"]) -> list[FeatureSpec]:
        raw = self.user_features if side == "user" else self.item_features
        return [FeatureSpec.from_dict(d) for d in raw]


class FeatureEmbedding(nn.Module):
    """Sum of one embedding per feature; ``multi`` features are averaged bags (0 = pad)."""

    def __init__(self, specs: list[FeatureSpec], dim: int):
        super().__init__()
        self.kinds = {s.name: s.kind for s in specs}
        self.tables = nn.ModuleDict({s.name: small_embedding(s.cardinality, dim) for s in specs})

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0
        for name, table in self.tables.items():
            x = table(feats[name])
            if self.kinds[name] == "multi":  # [N, bag, d] -> mean over non-padding
                count = (feats[name] > 0).sum(-1, keepdim=True).clamp(min=1)
                x = x.sum(1) / count
            total = total + x
        return total


def small_embedding(rows: int, dim: int) -> nn.Embedding:
    """Embedding with N(0, 0.02) rows and a zero row 0 (unknown / padding): small initial
    vectors keep the first inner-product logits near zero."""
    table = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.02)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


def mlp(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, 2 * dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(2 * dim, dim),
    )


class ItemTower(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.ids = small_embedding(cfg.n_items + 1, cfg.dim)
        self.features = FeatureEmbedding(cfg.specs("item"), cfg.dim)
        self.mlp = mlp(cfg.dim, cfg.dropout)

    def forward(self, ids: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """ids: [N] in 1..n_items (0 = unknown item); feats: encoded item features."""
        x = self.ids(ids) + self.features(feats)
        return x + self.mlp(x)


class SASRec(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.positions = nn.Embedding(cfg.max_len + 1, cfg.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.n_heads,
            2 * cfg.dim,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        # Made once (not per call); not saved: it is not a weight.
        causal = nn.Transformer.generate_square_subsequent_mask(cfg.max_len + 1)
        self.register_buffer("causal", causal, persistent=False)

    def positioned(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs plus positions, and the causal mask for their length."""
        length = x.shape[1]
        return self.dropout(x + self.positions.weight[:length]), self.causal[:length, :length]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, causal = self.positioned(x)
        return self.norm(self.layers(x, mask=causal, is_causal=True))

    def last(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``forward(x)[rows, at]`` (one state per row) for less work: the last layer only
        attends from position ``at``, the earlier layers run in full. Serving needs one
        state per user; for 50-item windows the encoder is 1.5x faster at batch 16-32, no
        faster at batch 1 (``python -m bench.tower``). Written for the pre-norm layers
        built above (``norm_first=True``)."""
        x, causal = self.positioned(x)
        *earlier, final = self.layers.layers
        for layer in earlier:
            x = layer(x, src_mask=causal, is_causal=True)
        h = final.norm1(x)
        rows = torch.arange(x.shape[0])
        later = torch.arange(x.shape[1]) > at[:, None]  # causal mask of the one query per row
        attended = final.self_attn(h[rows, at, None], h, h, key_padding_mask=later)[0]
        y = x[rows, at] + final.dropout1(attended[:, 0])
        h = final.linear2(final.dropout(final.activation(final.linear1(final.norm2(y)))))
        return self.norm(y + final.dropout2(h))


class GRU4Rec(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.dim, cfg.dim, num_layers=1, batch_first=True)
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.dropout(x))
        return self.out(h)

    def last(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``forward(x)[rows, at]``: a recurrence has to run over every position anyway."""
        return self.forward(x)[torch.arange(x.shape[0]), at]


class UserTower(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        specs = cfg.specs("user")
        self.features = FeatureEmbedding(specs, cfg.dim) if specs else None
        self.feature_mlp = mlp(cfg.dim, cfg.dropout) if specs else None
        encoders = {"sasrec": SASRec, "gru": GRU4Rec}
        self.encoder = encoders[cfg.encoder](cfg) if cfg.encoder != "none" else None
        self.bos = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.user_ids = small_embedding(cfg.n_users + 1, cfg.dim) if cfg.user_id_embedding else None

    def with_bos(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.bos.expand(seq.shape[0], 1, -1), seq], dim=1)

    def encode_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: [B, L, d] item vectors, right-padded -> [B, L + 1, d] states after BOS + each."""
        return self.encoder(self.with_bos(seq))

    def encode_last(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, L, d], [B] -> [B, d]: the state after each row's last valid item."""
        return self.encoder.last(self.with_bos(seq), lengths)

    def encode_features(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.features(feats)
        return x + self.feature_mlp(x)

    def forward(
        self,
        feats: dict[str, torch.Tensor] | None = None,
        seq: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        user_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One vector per user from whichever inputs are given -> [B, d].

        seq/lengths: right-padded item vectors [B, L, d] and valid lengths [B] (0 allowed);
        the state after the last valid item is used. A row of length 0 has no sequence
        branch at all, so that a features-only row gets the features-only vector (what the
        features-only mode is evaluated on), not that plus the state after BOS: on
        ML-100K the latter scored lower (validation NDCG@10 0.0341 vs 0.0388).
        feats: encoded user features. user_ids: 1-based known-user ids (0 = unknown).
        """
        parts = []
        if seq is not None and self.encoder is not None:
            last = self.encode_last(seq, lengths)
            parts.append(last * (lengths > 0).unsqueeze(-1).to(last.dtype))
        if feats is not None and self.features is not None:
            parts.append(self.encode_features(feats))
        if user_ids is not None and self.user_ids is not None:
            parts.append(self.user_ids(user_ids))
        if not parts:
            raise ValueError("the user tower needs features, a sequence or a user id")
        return torch.stack(parts).sum(0)


class ItemEnsemble(nn.Module):
    def __init__(self, members: list[ItemTower]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, ids: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([m(ids, feats) for m in self.members], dim=-1)


class UserEnsemble(nn.Module):
    """Members' user vectors concatenated. A sequence comes as the ensemble's item vectors,
    whose i-th slice of ``dim`` columns is member i's item vector."""

    def __init__(self, members: list[UserTower]):
        super().__init__()
        self.members = nn.ModuleList(members)

    # Every member has the same branches (one config).
    features = property(lambda self: self.members[0].features)
    encoder = property(lambda self: self.members[0].encoder)
    user_ids = property(lambda self: self.members[0].user_ids)

    def forward(self, feats=None, seq=None, lengths=None, user_ids=None) -> torch.Tensor:
        n = len(self.members)
        seqs = seq.chunk(n, dim=-1) if seq is not None else [None] * n
        return torch.cat(
            [m(feats, s, lengths, user_ids) for m, s in zip(self.members, seqs, strict=True)],
            dim=-1,
        )


class TwoTower(nn.Module):
    """The two towers. With ``cfg.members > 1``, an ensemble of independently trained
    two-tower models in one: each tower concatenates its members' vectors, so the inner
    product is the sum of the members' scores and the index serves it unchanged."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.members == 1:
            self.item_tower: nn.Module = ItemTower(cfg)
            self.user_tower: nn.Module = UserTower(cfg)
        else:
            single = cfg.member()
            self.item_tower = ItemEnsemble([ItemTower(single) for _ in range(cfg.members)])
            self.user_tower = UserEnsemble([UserTower(single) for _ in range(cfg.members)])

    @classmethod
    def ensemble(cls, members: list[TwoTower]) -> TwoTower:
        """One model from separately trained single models of the same configuration."""
        if len(members) == 1:
            return members[0]
        model = cls(replace(members[0].cfg, members=len(members)))
        for i, member in enumerate(members):
            model.item_tower.members[i].load_state_dict(member.item_tower.state_dict())
            model.user_tower.members[i].load_state_dict(member.user_tower.state_dict())
        return model.train(members[0].training)


def feature_tensors(specs: list[FeatureSpec], rows: list[dict]) -> dict[str, torch.Tensor]:
    """Encode raw feature dicts (one per user or item) into the tensors the towers take."""
    out = {}
    for spec in specs:
        encoded = [spec.encode(row.get(spec.name))[0] for row in rows]
        if spec.kind == "multi":
            width = max((len(ids) for ids in encoded), default=1) or 1
            padded = [ids + [0] * (width - len(ids)) for ids in encoded]
            out[spec.name] = torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)
        else:
            out[spec.name] = torch.tensor([ids[0] for ids in encoded], dtype=torch.long)
    return out
