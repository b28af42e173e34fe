"""The code DDPM's network (the paper's "latent DDPM" over semantic codes): DiffAE's MLP with skip inputs (official
``MLPSkipNet``, FAITHFULNESS.md: Latent DDPM)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import sinusoid


class MLPLayer(nn.Module):
    """Linear -> [h * (1 + Linear(SiLU(temb))) -> LayerNorm] -> SiLU -> Dropout (last layer: Linear only).

    Faithful: ``linear_emb`` and ``cond_layers.1`` are one shared Linear, so it appears under both names in
    the state dict, as in official checkpoints.
    """

    def __init__(self, d_in: int, d_out: int, cond_dim: int, last: bool = False, dropout: float = 0.0):
        super().__init__()
        self.last = last
        self.linear = nn.Linear(d_in, d_out)
        if not last:
            self.linear_emb = nn.Linear(cond_dim, d_out)
            self.cond_layers = nn.Sequential(nn.SiLU(), self.linear_emb)
            self.norm = nn.LayerNorm(d_out)
            self.act = nn.SiLU()
            self.dropout = nn.Dropout(dropout)
            # Faithful: Kaiming-normal (ReLU gain) on the Linear weights of the activated layers.
            for lin in (self.linear, self.linear_emb):
                nn.init.kaiming_normal_(lin.weight, a=0, nonlinearity="relu")

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        if self.last:
            return h
        h = h * (1.0 + self.cond_layers(cond))  # Faithful: condition_bias 1, scale only
        return self.dropout(self.act(self.norm(h)))


class LatentMLP(nn.Module):
    """The prediction MLP over 512-d semantic codes (eps, the paper's, or v). 10 layers of width 2048 by default
    (54,109,696 params).

    The input code z_t is concatenated to the hidden state ([h, z_t]) before every layer but the first.
    """

    def __init__(self, code_dim: int = 512, hidden: int = 2048, num_layers: int = 10, time_sinusoid: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        self.time_sinusoid = time_sinusoid
        self.time_embed = nn.Sequential(nn.Linear(time_sinusoid, code_dim), nn.SiLU(), nn.Linear(code_dim, code_dim))
        layers = [MLPLayer(code_dim, hidden, code_dim, dropout=dropout)]
        layers += [MLPLayer(hidden + code_dim, hidden, code_dim, dropout=dropout) for _ in range(num_layers - 2)]
        layers.append(MLPLayer(hidden + code_dim, code_dim, code_dim, last=True))
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z (B, code_dim) noisy codes; t (B,) original timestep indices -> prediction (B, code_dim)."""
        cond = self.time_embed(sinusoid(t, self.time_sinusoid))
        h = z
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = torch.cat([h, z], dim=1)
            h = layer(h, cond)
        return h
