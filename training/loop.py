"""The one training loop of the project: every trainer (Patch-DM's denoiser and code DDPM, and any family to come)
is a ``Task`` run by ``Trainer``.

Written once here: the run folder (created, locked against a second launch, removed after a failed start), the
progress bar, Ctrl-C that saves and stops at a step boundary, a non-finite loss that stops without saving, a
stats.jsonl row of every loss term (and the loss by timestep quartile) every ``log_every`` steps, the EMA (and the
averages of post-hoc EMA), the learning-rate schedule, the optimizer step with gradient clipping, previews,
checkpoints and snapshots at their cadence, exact resume, and torchrun (DDP around the task's loss module; only
rank 0 writes). A task (EDM2's network + loss + dataset, as one object) supplies what differs: the network and its
optimizer, a step's batch, the loss terms, previews and the checkpoint's other contents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from configs import to_dict
from runtime import dist as D
from runtime.device import autocast
from runtime.errors import CLIError, GracefulStop
from runtime.files import JsonlLog, atomic_write_text
from . import checkpoint as C
from .board import Board, writer_class
from .ema import EMA
from .meter import Meter, total
from .recipe import EMASchedule, lr_scale
from .run import RunFolder


@dataclass
class LoopSettings:
    """How long and how a task is trained: steps, the global batch (samples per step), the step cadences of
    checkpoints, previews (0: none) and log rows, gradient clipping, autocast precision, the EMA and learning-rate
    schedules (training/recipe.py), the widths of the power-function averages kept for post-hoc EMA
    (training/posthoc.py), and snapshots every ``snapshot_every`` steps (0: none; the EMA weights, with
    ``snapshot_raw`` the raw ones too, in checkpoints/step-NNNNNNN.pt beside last.pt, never removed); desc and unit
    label the progress bar and the throughput column (<unit>_per_s)."""
    max_steps: int
    batch_size: int
    save_every: int
    preview_every: int = 0
    log_every: int = 50
    grad_clip: float = 1.0
    precision: str = "fp32"
    ema: EMASchedule = EMASchedule()
    lr_warmup: int = 0
    lr_decay_start: int = 0
    posthoc: tuple = ()
    snapshot_every: int = 0
    snapshot_raw: bool = False
    tensorboard: bool = False
    desc: str = "train"
    unit: str = "images"


def cli_settings(task, args) -> "LoopSettings":
    """The task's settings with the training script's --log_every, --snapshot_every, --snapshot_raw and
    --tensorboard."""
    return replace(task.settings(args.log_every), snapshot_every=args.snapshot_every or 0,
                   snapshot_raw=args.snapshot_raw, tensorboard=args.tensorboard)


class Task:
    """What a model family gives the loop. Subclasses set ``name`` (the trained network's name in the checkpoint),
    ``family``, ``network`` (an nn.Module, raw weights) and ``config`` (the run's config, saved as config.json and in
    the checkpoint), and implement the methods below that apply."""

    name = family = ""
    network: nn.Module
    config = None

    def optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def loss_module(self) -> nn.Module:
        """A module whose forward(**batch) returns the loss terms {name: scalar or per-sample (B,) tensor}; the
        loss is the sum of their means. It owns ``network``, so DDP sees every parameter use."""
        raise NotImplementedError

    def batch(self, step: int) -> tuple:
        """(batch, events) of this rank at ``step``: keyword arguments of the loss module, as a function of the run
        seed and the step only (exact resume), and dicts to log as stats.jsonl rows of their own."""
        raise NotImplementedError

    def quartile(self, batch) -> torch.Tensor | None:
        """Each sample's loss-time quartile (B,) in 0..3 for the loss-by-quartile column, or None."""
        return None

    def after_clip(self) -> None:
        """Called between gradient clipping and the optimizer step."""

    def after_step(self, batch) -> None:
        """Called after the optimizer step and the EMA update (e.g. a discriminator's own step)."""

    def preview(self, ema_network: nn.Module, step: int) -> None:
        """Write a preview of the EMA network as RUN/samples/STEP.png (7 digits; main process only)."""

    def row_extra(self) -> dict:
        """Values added to every log row."""
        return {}

    def describe(self, start: int) -> str:
        return f"{self.name}: from step {start}"

    def checkpoint_base(self) -> dict:
        """The checkpoint without the trained network's entry and training state (the loop adds those): a
        checkpoint.make(...) dict with the family's other networks and extra values."""
        return C.make(self.family, self.config_dict(), {})

    def config_dict(self) -> dict:
        return to_dict(self.config)


def optimizer_step(params, opt, scaler, loss, grad_clip: float, after_clip=None) -> torch.Tensor:
    """Backward, unscale, clip the global grad norm (grad_clip 0: measure it, clip nothing), ``after_clip()`` (e.g.
    the LHQ table hack), step, scaler update. Returns the norm before clipping."""
    params = list(params)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if after_clip is not None:
        after_clip()
    scaler.step(opt)
    scaler.update()
    return grad_norm


class StepLoop(GracefulStop):
    """Ctrl-C asks the loop to stop at the next step boundary; ``check(step, save)`` then saves and stops with a
    one-line message (a second Ctrl-C stops at once, the last checkpoint intact). enabled=False (several processes:
    every rank would have to agree on the step) leaves Ctrl-C as an immediate interrupt."""

    def __init__(self, ckpt_path, enabled: bool = True):
        super().__init__()
        self.ckpt_path, self.enabled = ckpt_path, enabled

    def __enter__(self):
        return super().__enter__() if self.enabled else self

    def __exit__(self, *exc):
        return super().__exit__(*exc) if self.enabled else False

    def check(self, step: int, save, bar=None) -> None:
        if self.requested:
            if bar is not None:
                bar.close()
            save()
            raise KeyboardInterrupt(f"stopped at step {step}; saved {self.ckpt_path}: re-run the same command to "
                                    "resume")


class Trainer:
    """One task trained in the run folder ``run`` (checkpoints/last.pt, config.json, stats.jsonl), resumed from the
    checkpoint dict ``resume`` when given (its entry of the task's network and its training state)."""

    def __init__(self, task: Task, settings: LoopSettings, run, device, d: D.Dist = D.Dist(), resume=None):
        self.task, self.s, self.run, self.device, self.d = task, settings, Path(run), device, d
        self.ckpt_path = self.run / "checkpoints" / "last.pt"
        self.net = task.network
        self.ema = EMA(self.net, settings.ema.decay)
        self.posthoc = {float(std): (EMA(self.net, 0.0), EMASchedule("power", std=float(std)))
                        for std in settings.posthoc}
        self.opt = task.optimizer()
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.step, self.samples, self.board = 0, 0, None
        if settings.tensorboard and d.main:
            writer_class()  # a missing package is one line before anything is written
        if resume is not None:
            self.restore(resume)
        module = task.loss_module()
        if d.enabled:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None)
        self.module = module

    def restore(self, ck: dict) -> None:
        entry = ck["networks"][self.task.name]
        self.net.load_state_dict(entry["raw"])
        self.ema.load_state_dict(entry["ema"])
        for std, (ema, _) in self.posthoc.items():
            ema.load_state_dict(entry["posthoc"]["widths"][f"{std:g}"])
        self.opt.load_state_dict(ck["training"]["opt"])
        self.scaler.load_state_dict(ck["training"]["scaler"])
        self.step = entry["step"]
        self.samples = entry["samples"] if entry["samples"] is not None else self.step * self.s.batch_size

    def save(self) -> None:
        ck = self.task.checkpoint_base()
        ck["networks"][self.task.name] = C.network_entry(self.net.state_dict(), self.ema.state_dict(), self.step,
                                                         self.samples, self.posthoc_states())
        ck["training"] = {"network": self.task.name, "opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}
        C.save(ck, self.ckpt_path)

    def posthoc_states(self) -> dict | None:
        """The post-hoc averages as a checkpoint keeps them: {"widths": {width: state dict}, "buffers": the entries
        that are copied, not averaged}; None when the run tracks none."""
        if not self.posthoc:
            return None
        return {"widths": {f"{std:g}": ema.state_dict() for std, (ema, _) in self.posthoc.items()},
                "buffers": sorted(self.ema.buffers)}

    def snapshot_path(self, step: int) -> Path:
        return self.ckpt_path.parent / f"step-{step:07d}.pt"

    def save_snapshot(self) -> None:
        """The EMA weights (and with ``snapshot_raw`` the raw ones; the post-hoc averages where tracked) at this step,
        without the optimizer: a checkpoint test.py reads like last.pt but that cannot be resumed."""
        ck = self.task.checkpoint_base()
        raw = self.net.state_dict() if self.s.snapshot_raw else None
        ck["networks"][self.task.name] = C.network_entry(raw, self.ema.state_dict(), self.step, self.samples,
                                                         self.posthoc_states())
        C.save(ck, self.snapshot_path(self.step))

    def run_loop(self) -> int:
        """Train to ``max_steps``; returns the final step."""
        with RunFolder(self.run, self.ckpt_path, self.d.main), StepLoop(self.ckpt_path, self.d.world == 1) as stop:
            return self._loop(stop)

    def _stop_nonfinite(self, e) -> CLIError:
        return CLIError(f"{e}; stopping without saving. The last good checkpoint is {self.ckpt_path}"
                        + ("" if self.ckpt_path.exists() else " (none yet)"))

    def _loop(self, stop) -> int:
        s, d, task = self.s, self.d, self.task
        if d.main:
            atomic_write_text(json.dumps(task.config_dict(), indent=2), self.run / "config.json")
            print(task.describe(self.step))
        log, meter = JsonlLog(self.run / "stats.jsonl"), Meter(self.device)
        # a resumed run drops the events a killed run wrote after its last checkpoint
        self.board = Board(self.run / "tensorboard", self.step or None) if s.tensorboard and d.main else None
        bar = tqdm(total=s.max_steps, initial=self.step, disable=not d.main, desc=s.desc, unit="step",
                   dynamic_ncols=True)
        try:
            while self.step < s.max_steps:
                stop.check(self.step, self.save, bar)
                batch, events = task.batch(self.step)
                if d.main:
                    for event in events:
                        log.write(step=self.step, **event)
                grad_norm = self._optimize(batch, meter)
                self.step += 1
                self.samples += s.batch_size
                bar.update(1)
                self._log_preview_save(meter, log, bar, grad_norm)
        finally:
            bar.close()  # on any exit, so that an error line starts a line of its own
            if self.board is not None:
                self.board.close()
        return self.step

    def _optimize(self, batch, meter: Meter) -> torch.Tensor:
        """Forward, loss, backward, clipped optimizer step and EMA for one batch; returns the gradient norm."""
        self.net.train()
        with autocast(self.device, self.s.precision):
            terms = self.module(**batch)
        loss = total(terms)
        if self.s.lr_warmup or self.s.lr_decay_start:
            scale = lr_scale(self.step, self.s.lr_warmup, self.s.lr_decay_start)
            for group in self.opt.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * scale
        grad_norm = optimizer_step(self.net.parameters(), self.opt, self.scaler, loss, self.s.grad_clip,
                                   self.task.after_clip)
        self.ema.update(self.net, self.s.ema.decay_at(self.step + 1))
        for ema, schedule in self.posthoc.values():
            ema.update(self.net, schedule.decay_at(self.step + 1))
        self.task.after_step(batch)
        meter.add({k: v.detach() for k, v in terms.items()}, loss.detach(), self.task.quartile(batch))
        return grad_norm

    def _log_preview_save(self, meter: Meter, log: JsonlLog, bar, grad_norm) -> None:
        """The log row, preview and checkpoint that fall on this step."""
        s, d, step = self.s, self.d, self.step
        last = step == s.max_steps
        if step % s.log_every == 0 or last:
            try:
                row = meter.row(d, step, self.samples, s.batch_size, s.unit)
            except FloatingPointError as e:
                raise self._stop_nonfinite(e) from None
            row.update(grad_norm=float(grad_norm), lr=self.opt.param_groups[0]["lr"],
                       scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0, **self.task.row_extra())
            if d.main:
                log.write(**row)
                if self.board is not None:
                    self.board.row(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", ips=f"{row[s.unit + '_per_s']:.1f}")
        if d.main and s.preview_every and (step % s.preview_every == 0 or last):
            self.task.preview(self.ema.model, step)
            if self.board is not None:
                self.board.preview(self.run / "samples" / f"{step:07d}.png", step)
        snapshot = s.snapshot_every and step % s.snapshot_every == 0
        if step % s.save_every == 0 or last or snapshot:
            if meter.nonfinite(d):  # never save weights a non-finite step has touched
                raise self._stop_nonfinite(f"non-finite loss before step {step}")
            if d.main and snapshot:
                self.save_snapshot()
            if d.main and (step % s.save_every == 0 or last):
                self.save()
