"""Loss bookkeeping between log rows, on the device (no host sync per step)."""

from __future__ import annotations

import time

import torch

from runtime import dist as D


def total(terms: dict) -> torch.Tensor:
    """The loss a step minimises: the sum of its terms' means (each term a scalar or per sample (B,))."""
    values = iter(terms.values())
    loss = next(values).mean()
    for v in values:
        loss = loss + v.mean()
    return loss


class Meter:
    """Sums of every loss term, the step count, non-finite steps, and (when the task gives each sample's timestep
    quartile) the loss per quartile of the loss times."""

    def __init__(self, device):
        self.device, self.names, self.acc, self.t0 = device, None, None, time.time()

    @torch.no_grad()
    def add(self, terms: dict, loss: torch.Tensor, quartile: torch.Tensor | None = None) -> None:
        if self.names is None:
            self.names = list(terms)
            self.acc = torch.zeros(len(self.names) + 10, device=self.device)  # terms, steps, non-finite, q (4 + 4)
        k = len(self.names)
        for i, name in enumerate(self.names):
            self.acc[i] += terms[name].float().mean()
        self.acc[k] += 1
        self.acc[k + 1] += (~torch.isfinite(loss)).float()
        if quartile is not None:
            per = sum(terms[name].float() for name in self.names)  # each sample's total
            self.acc[k + 2:k + 6].index_add_(0, quartile, per)
            self.acc[k + 6:k + 10].index_add_(0, quartile, torch.ones_like(per))

    def nonfinite(self, d: D.Dist) -> bool:
        """True when a step since the last row had a non-finite loss (on any rank)."""
        return self.acc is not None and D.all_mean(self.acc[len(self.names) + 1], d).item() > 0

    def row(self, d: D.Dist, step: int, samples: int, batch: int, unit: str) -> dict:
        """Averages over ranks and steps since the last row; resets. Raises FloatingPointError on a non-finite loss.
        ``samples`` is the number of training samples seen so far (batch sizes of earlier resumed segments
        included); ``unit`` names them in the throughput column (<unit>_per_s)."""
        k = len(self.names)
        tot = D.all_mean(self.acc, d) * d.world
        if tot[k + 1] > 0:
            raise FloatingPointError(f"non-finite loss before step {step}")
        dt, n = time.time() - self.t0, tot[k].item() / d.world
        steps = tot[k].item()
        sums = [tot[i] for i in range(k)]
        loss = sums[0]
        for s in sums[1:]:
            loss = loss + s
        row = dict(step=step, samples=samples, loss=loss.item() / steps)
        if k > 1 or self.names[0] != "loss":
            row.update({name: s.item() / steps for name, s in zip(self.names, sums)})
        if tot[k + 6:k + 10].sum() > 0:
            row["loss_q"] = [round((tot[k + 2 + i] / tot[k + 6 + i]).item(), 6) if tot[k + 6 + i] > 0 else None
                             for i in range(4)]
        row.update(sec_per_step=dt / n, **{f"{unit}_per_s": n * batch / dt})
        self.acc.zero_()
        self.t0 = time.time()
        return row
