"""The heads that follow the pooled backbone features: none (the untrained embedding), linear,
mlp, and the default trained head, the blend (fitted by :mod:`imgembed.train.blend`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelError


def joined(x: torch.Tensor, parts: list[int]) -> torch.Tensor:
    """(..., sum(parts)) pooled features -> the unit-normalised parts side by side, each scaled
    by 1 / sqrt(len(parts)) so that the whole has unit norm."""
    if len(parts) == 1:
        return F.normalize(x, dim=-1)
    chunks = torch.split(x, parts, dim=-1)
    return torch.cat([F.normalize(c, dim=-1) for c in chunks], dim=-1) / len(parts) ** 0.5


class BlendHead(nn.Module):
    """(N, sum(parts)) pooled features -> (N, parts[0] + proj) [u ; weight * normalise(linear(z))]."""

    def __init__(self, in_dim: int, proj: int, weight: float, parts: list[int] | None = None):
        super().__init__()
        self.parts = [int(p) for p in parts] if parts else [in_dim]
        self.linear = nn.Linear(sum(self.parts), proj)
        self.register_buffer("weight", torch.tensor(float(weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.normalize(x[:, :self.parts[0]], dim=1)
        return torch.cat([u, self.weight * self.projected(x)], dim=1)

    def projected(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(joined(x, self.parts)), dim=1)


def head_config(parts: list[int], proj: int, weight: float, taps: tuple[int, ...] = ()) -> dict:
    """``parts``: the channels of each pooled part (the last map's, then each tap's)."""
    config = {"type": "blend", "proj": int(proj), "weight": float(weight), "dim": int(parts[0] + proj)}
    if taps:
        config.update(taps=[int(t) for t in taps], parts=[int(p) for p in parts])
    return config


def build_head(config: dict | None, in_dim: int) -> nn.Module:
    """``None`` -> identity; ``{"type": "linear", "dim": D}``; ``{"type": "mlp", "hidden": H, "dim": D}``;
    ``{"type": "blend", "proj": K, "weight": W, "dim": in_dim + K[, "taps": [...], "parts": [...]]}``
    (see :mod:`imgembed.train.blend`)."""
    if not config:
        return nn.Identity()
    kind = config.get("type")
    if kind == "linear":
        return nn.Linear(in_dim, int(config["dim"]))
    if kind == "blend":
        return BlendHead(in_dim, int(config["proj"]), float(config["weight"]), config.get("parts"))
    if kind == "mlp":
        hidden = int(config["hidden"])
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, int(config["dim"])))
    raise ModelError(f"unknown head type {kind!r} in checkpoint (expected blend, linear or mlp)")
