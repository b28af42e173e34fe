"""Which loss times a batch trains on and how much each counts: the loss-time side of the training recipe, beyond
the paper (configs.common.Recipe; docs/EVALUATION.md, "Faster training").

``uniform`` sampling and ``uniform`` weights are the paper's: the process's own ``draw_t`` and every time alike.
``logit_normal`` draws u = sigmoid(N(mean, std)), the fraction of the way from the data (0) to the noise (1), and
asks the process for the loss time there (Esser et al. 2024 for rectified flow; for the discrete process u picks
the timestep index floor(u T)). ``min_snr`` weights each time so that the loss becomes min(SNR, gamma) times the
squared error of the implied x0 (Hang et al. 2023): the process knows its own SNR and what multiple of the x0 error
its target's error is (eps: SNR, v: SNR + 1, flow velocity: 1 / t^2), so one definition serves every objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimeRecipe:
    sampling: str = "uniform"
    mean: float = 0.0
    std: float = 1.0
    weight: str = "uniform"
    gamma: float = 5.0

    @classmethod
    def of(cls, section) -> "TimeRecipe":
        """The recipe of a training section that mixes in configs.common.Recipe."""
        return cls(section.t_sampling, section.t_mean, section.t_std, section.loss_weight, section.min_snr_gamma)

    def draw(self, process, n: int, generator=None) -> torch.Tensor:
        """n loss times of ``process`` (step indices or flow times, as its ``draw_t`` gives)."""
        if self.sampling == "uniform":
            return process.draw_t(n, generator)
        if self.sampling == "logit_normal":
            u = torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, dtype=torch.float64))
            return process.from_unit(u)
        raise ValueError(f"t sampling {self.sampling!r}: choose uniform or logit_normal")

    def weights(self, process, t: torch.Tensor) -> torch.Tensor | None:
        """Each sample's loss weight (B,) float32 at loss times t, or None for uniform weights."""
        if self.weight == "uniform":
            return None
        if self.weight == "min_snr":
            return process.min_snr_weight(t, self.gamma).float()
        raise ValueError(f"loss weight {self.weight!r}: choose uniform or min_snr")

    def weigh(self, terms: dict, process, t: torch.Tensor) -> dict:
        """Per-sample loss terms {name: (B,)} times each sample's weight (unchanged for uniform weights)."""
        w = self.weights(process, t)
        if w is None:
            return terms
        return {k: v * w.to(v.device) for k, v in terms.items()}
