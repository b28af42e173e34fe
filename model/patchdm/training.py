"""How Patch-DM trains, as two tasks of the shared loop (training/loop.py): the denoiser (train.py) and the code DDPM
over the learned semantic codes (train_latent.py).

Every random draw of a step is a function of (run seed, step, sample index) only (runtime/rng.py): the same draws
whatever the number of processes, and a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import build_dataset
from diffusion import make_process
from diffusion.weighting import TimeRecipe
from runtime import dist as D
from runtime.data import check_stored_size
from runtime.device import autocast
from runtime.errors import CLIError
from runtime.files import save_grid
from runtime.rng import rng, seed_for
from training import checkpoint as C
from training.batches import ImageBatches, every, local_batch
from training.loop import LoopSettings, Task
from training.recipe import EMASchedule, adam, loop_recipe
from ..common import count_params
from .builders import build_latent, build_patchdm
from .checkpoint import CODE_DDPM, DENOISER, FAMILY, TABLE_KEY, load_code_table
from .denoiser import CanvasOptions, Denoiser, Window
from .fast import set_checkpointing
from .grid import window_crop, window_masks, window_regions, window_size
from .modes import collage_mode
from .sampling import code_process, image_process, sample_canvas
from .seamless import configured


# -- the random draws of a denoiser step ---------------------------------------------------------------------------

def sample_window(h: int, w: int, p: int, generator: torch.Generator | None = None) -> tuple:
    """The training window's top-left padded-grid index, uniform over (0..H/p-1) x (0..W/p-1), shared by the batch.

    Deviation: drawn from a torch.Generator instead of Python's ``random`` (same distribution, reproducible).
    """
    row = int(torch.randint(h // p, (1,), generator=generator))
    col = int(torch.randint(w // p, (1,), generator=generator))
    return row, col


def cfg_keep_masks(batch: int, code_drop: float = 0.1, pos_drop: float = 0.5,
                   generator: torch.Generator | None = None, device=None):
    """Per-image CFG dropout masks: keep the code if r >= code_drop, the positions if r' >= pos_drop (drawn
    independently). Returns (code_keep, pos_keep), float (B,) of 0/1."""
    r = torch.rand(2, batch, generator=generator)
    return (r[0] >= code_drop).float().to(device), (r[1] >= pos_drop).float().to(device)


def window_at(cfg, step: int) -> tuple:
    """The training window of a step on the patch grid (shared by every rank and sample; the data loader asks for it
    too): its top-left padded-grid index, with room for its ``training.window_tiles``."""
    (h, w), p, (rt, ct) = cfg.data.image_size, cfg.model.patch_size, cfg.training.window_tiles
    return sample_window(h - (rt - 1) * p, w - (ct - 1) * p, p, rng(cfg.training.seed, "window", step))


def offset_window(h: int, w: int, p: int, tiles: tuple, generator: torch.Generator | None = None) -> tuple:
    """A random-offset window (beyond the paper): the top-left pixel (y, x) of the padded window whose R x C collaged
    tiles start at any pixel (u, v) with every tile row and column on the image, u uniform in -(p-1)..H-1-(R-1)p (so
    each tile position of a seamless sampling grid, offsets 0..p-1, is drawn alike). The window is the one that
    grid offset (-u mod p) puts there: sampling and training see the same patches at the same positions."""
    u = int(torch.randint(-(p - 1), h - (tiles[0] - 1) * p, (1,), generator=generator))
    v = int(torch.randint(-(p - 1), w - (tiles[1] - 1) * p, (1,), generator=generator))
    return u - p // 2, v - p // 2


def sample_window_at(cfg, step: int, k: int):
    """The window of sample k of the global batch at ``step``: the step's grid window, or with
    ``training.window_offset = "random"`` its own pixel top (y, x) drawn from (seed, step, k)."""
    tc = cfg.training
    if tc.window_offset != "random":
        return window_at(cfg, step)
    return offset_window(*cfg.data.image_size, cfg.model.patch_size, tuple(tc.window_tiles),
                         rng(tc.seed, "window", step, k))


def step_windows(cfg, step: int, first: int, b: int):
    """The windows of samples first..first+b-1 at ``step``: the shared (row, col) on the grid, or a (b, 2) long
    tensor of pixel tops (random offsets)."""
    if cfg.training.window_offset != "random":
        return window_at(cfg, step)
    return torch.tensor([sample_window_at(cfg, step, k) for k in range(first, first + b)], dtype=torch.long)


def draw(cfg, step: int, rank: int, b: int, world: int, device):
    """Window, loss times, noise, CFG masks and pixel offset (the pixel_random ablation; else None) of this rank's
    slice of the global batch at ``step``. Also seeds dropout for the step (per rank: the only draw that differs
    with the number of processes)."""
    seed, p = cfg.training.seed, cfg.model.patch_size
    window = step_windows(cfg, step, rank * b, b)
    size = window_size(p, tuple(cfg.training.window_tiles))
    g = rng(seed, "timesteps", step)
    mine = slice(rank * b, (rank + 1) * b)
    # the loss times: step indices, or flow times in [0, 1)
    t = TimeRecipe.of(cfg.training).draw(image_process(cfg.diffusion), b * world, g)[mine]
    masks = (None, None)
    if cfg.training.cfg:
        code_keep, pos_keep = cfg_keep_masks(b * world, cfg.training.cfg_code_drop, cfg.training.cfg_pos_drop, g)
        masks = (code_keep[mine].to(device), pos_keep[mine].to(device))
    # Deviation: only the window's noise is drawn (the official code draws the whole padded canvas); the loss never
    # sees the rest, so it is the same function.
    noise = torch.empty(b, 3, *size, device=device)
    for i, j in enumerate(range(rank * b, (rank + 1) * b)):
        noise[i] = torch.randn(3, *size, generator=rng(seed, "noise", step, j, device=device), device=device)
    offset = None
    if collage_mode(cfg.model.collage).random_offset:  # the shifted crop's offset in the window, shared by the batch
        offset = tuple(torch.randint(p, (2,), generator=rng(seed, "offset", step)).tolist())
    torch.manual_seed(seed_for(seed, "dropout", step, rank))
    return window, t.to(device), noise, masks, offset


# -- the denoiser ----------------------------------------------------------------------------------------------------

class LossStep(nn.Module):
    """The network plus its window loss as one forward, so DDP sees every parameter use."""

    def __init__(self, net, patch_size: int, image_size: tuple, process=None, windowed: bool = False,
                 collage: str = "feature", weighting: TimeRecipe = TimeRecipe(), tiles: tuple = (1, 1)):
        super().__init__()
        self.net, self.p, self.image_size, self.windowed = net, patch_size, tuple(image_size), windowed
        self.tiles = tuple(tiles)
        self.process, self.weighting = process or make_process(), weighting
        self.den = Denoiser(net, patch_size, collage)

    def forward(self, x0, index, t, noise, window, code_keep=None, pos_keep=None, offset=None) -> dict:
        """x0: images (B, 3, H, W), or with ``windowed`` already the window of the padded images (as the dataset
        loads them for code-table models; 2p x 2p, the paper's, or ``tiles`` + 1 patches); noise for the window only;
        window: the official (row, col), or the samples' pixel tops (random offsets, grid.window_regions).
        Returns the per-image loss terms {"shift": (B,), "noshift": (B,)}, each weighted by the recipe's loss
        weight of its time (1 for the paper's)."""
        code = self.net.codes(None if self.windowed else x0, index)
        if code_keep is not None:  # Faithful: CFG drops the code by multiplying it by 0
            code = code * code_keep[:, None].to(code.dtype)
        if self.windowed:
            x0_win, mask_win = x0, window_masks(self.image_size, window, self.p, self.tiles, x0.device)
        else:
            x0_win, mask_win = window_crop(x0, window, self.p, self.tiles)
        shift, noshift = self.den.loss_terms(Window(x0_win, mask_win, noise, window, offset), t, code, self.process,
                                             pos_keep)
        return self.weighting.weigh({"shift": shift, "noshift": noshift}, self.process, t)


@torch.no_grad()
def preview(net, cfg, x0, index, device, path):
    """DDIM samples of the EMA model with the codes of a fixed batch.

    Deviation: the official previews are 1000-step DDPM samples of the raw weights."""
    code = net.codes(x0, index)
    x_T = torch.randn(x0.shape, generator=rng(cfg.training.seed, "preview", device=device), device=device)
    process = image_process(cfg.diffusion).respace(cfg.sampling.steps)
    with autocast(device, cfg.training.precision):
        img = sample_canvas(Denoiser(net, cfg.model.patch_size, cfg.model.collage), x_T, code, process,
                            opts=CanvasOptions(cfg.sampling.cfg_scale, seed=cfg.training.seed,
                                               clip_x0=cfg.sampling.clip_x0,
                                               seamless=configured(cfg.sampling)))
    save_grid(img.float(), path, ncol=2)


def build_net(cfg, data, resume):
    """The PatchDM to train: a code table initialised from cfg.data.code_table (rows must match the images), or the
    image encoder. Initial weights depend only on the seed (the same on every rank and every run)."""
    code_init = None
    if cfg.model.code_source == "table":
        if resume is None:
            if not cfg.data.code_table:
                raise CLIError("--semantic_path is required for a code-table model (make one with initialize.py), "
                               "or pass --semantic_enc to train the image encoder")
            code_init = load_code_table(cfg.data.code_table)
            rows = code_init.shape[0]
        else:
            rows = resume["networks"][DENOISER]["raw"][TABLE_KEY].shape[0]
        if rows != len(data):
            raise CLIError(f"the code table has {rows} rows but the dataset {cfg.data.path} has {len(data)} "
                           "images; they must match (re-run initialize.py on this dataset)")
    torch.manual_seed(cfg.training.seed)
    return build_patchdm(cfg.model, len(data), code_init)


class DenoiserTask(Task):
    """train.py: the Patch-DM denoiser on windows of the training images (one CPU/GPU or many under torchrun)."""

    name, family = DENOISER, FAMILY

    def __init__(self, cfg, run: Path, d: D.Dist, device, resume=None, allow_upscale: bool = False):
        tc = cfg.training
        self.config, self.run, self.d, self.device = cfg, Path(run), d, device
        self.data = data = build_dataset(cfg.data.path, cfg.data)
        check_stored_size(data, cfg.data.image_size, cfg.name, allow_upscale)
        self.network = set_checkpointing(build_net(cfg, data, resume).to(device), tc.checkpointing,
                                         tc.checkpoint_levels)
        self.b_local = local_batch(tc.batch_size, d)
        p = cfg.model.patch_size
        # Deviation: code-table models only need each image's training window, so the loader reads just that (same
        # pixels; images stay whole for the image encoder, which sees the full image).
        tiles = tuple(tc.window_tiles)
        region = None if self.network.needs_image else (
            lambda s, k: window_regions(step_windows(cfg, s, k, 1), p, tiles)[0])
        self.images = ImageBatches(data, self.b_local, tc.seed, d, region, cfg.data.num_workers, device.type == "cuda",
                                   tc.windows_per_image)
        self.fixed = None

    def settings(self, log_every: int) -> LoopSettings:
        tc = self.config.training
        return LoopSettings(
            max_steps=tc.max_steps or 2_000_000_000 // tc.batch_size,  # official: 2e9 samples
            batch_size=tc.batch_size, save_every=every(tc.save_every_samples, tc.batch_size),
            preview_every=every(tc.sample_every_samples, tc.batch_size), log_every=log_every,
            grad_clip=tc.grad_clip, precision=tc.precision, desc="train", unit="images", **loop_recipe(tc))

    def optimizer(self):
        tc, net = self.config.training, self.network
        if tc.code_lr_scale == 1.0 or not net.uses_table:  # the paper's: one group
            return adam(net.parameters(), tc, tc.weight_decay)
        table = net.code_source.weight
        rest = [q for q in net.parameters() if q is not table]
        return adam([{"params": rest}, {"params": [table], "lr": tc.lr * tc.code_lr_scale}], tc, tc.weight_decay)

    def loss_module(self):
        cfg = self.config
        return LossStep(self.network, cfg.model.patch_size, cfg.data.image_size, image_process(cfg.diffusion),
                        windowed=not self.network.needs_image, collage=cfg.model.collage,
                        weighting=TimeRecipe.of(cfg.training), tiles=tuple(cfg.training.window_tiles))

    def batch(self, step: int):
        d, device = self.d, self.device
        x0, index, events = self.images.at(step)
        x0, index = x0.to(device, non_blocking=True), index.to(device, non_blocking=True)
        if self.fixed is None:  # the images whose codes the previews use
            idx = list(dict.fromkeys(index.tolist()))[:4]  # distinct images (several windows of each: one)
            self.fixed = (torch.stack([self.data[i][0] for i in idx]).to(device), torch.tensor(idx, device=device))
            if d.main:
                save_grid(self.fixed[0], self.run / "samples" / "real.png", ncol=2)
        window, t, noise, (code_keep, pos_keep), offset = draw(self.config, step, d.rank, self.b_local, d.world,
                                                               device)
        return dict(x0=x0, index=index, t=t, noise=noise, window=window, code_keep=code_keep, pos_keep=pos_keep,
                    offset=offset), events

    def quartile(self, batch):
        t = batch["t"]
        return ((t * 4).long() if t.is_floating_point() else t * 4 // self.config.diffusion.num_timesteps).clamp(max=3)

    def after_clip(self):
        net, scale = self.network, self.config.training.code_grad_scale
        table = net.code_source.weight if net.uses_table else None
        if table is not None and scale != 1.0 and table.grad is not None:
            table.grad.mul_(scale)  # Faithful: the LHQ table hack, after clipping

    def preview(self, ema_network, step: int):
        preview(ema_network, self.config, *self.fixed, self.device, self.run / "samples" / f"{step:07d}.png")

    def row_extra(self) -> dict:
        return self.images.row_extra()

    def describe(self, start: int) -> str:
        net = self.network
        return (f"run {self.run}: {len(self.data)} images, {count_params(net):,} parameters "
                f"({count_params(net.code_source):,} in the code source), {self.config.training.precision}, "
                f"{self.d.world} process(es), from step {start}")

    def checkpoint_base(self) -> dict:
        return C.make(FAMILY, self.config_dict(), {}, extra={"num_codes": len(self.data)})


# -- the code DDPM -------------------------------------------------------------------------------------------------

@torch.no_grad()
def encoder_codes(net, data, num_workers: int, device, batch=64) -> torch.Tensor:
    """Codes of every training image from the image encoder (the official fallback never ran, FAITHFULNESS.md)."""
    enc = net.code_source.to(device)
    out = []
    for x, _ in tqdm(DataLoader(data, batch_size=batch, num_workers=num_workers), desc="encode", unit="batch"):
        out.append(enc(x.to(device)).float().cpu())
    return torch.cat(out)


def code_loss(latent_net, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, process) -> torch.Tensor:
    """The code DDPM's loss: L1 between the process's target (eps, the paper's; or v) and the MLP's prediction, mean
    over dims then batch."""
    z_t = process.corrupt(z0, t, noise)
    return (process.target(z0, t, noise) - latent_net(z_t, process.net_t(t)).float()).abs().mean()


class CodeLoss(nn.Module):
    def __init__(self, net, process):
        super().__init__()
        self.net, self.process = net, process

    def forward(self, z0, t, noise) -> dict:
        return {"loss": code_loss(self.net, z0, t, noise, self.process)}


class CodeTask(Task):
    """train_latent.py: the code DDPM (latent MLP) on the semantic codes ``codes`` (N, D) of a trained denoiser,
    whose checkpoint entry ``denoiser`` (and ``code_weights``, the weights the codes came from) the full checkpoint
    keeps beside it."""

    name, family = CODE_DDPM, FAMILY

    def __init__(self, codes: torch.Tensor, cfg, run: Path, device, denoiser: dict, code_weights: str,
                 source: str = ""):
        lc = cfg.latent
        self.config, self.run, self.device = cfg, Path(run), device
        self.denoiser, self.extra = denoiser, {"code_weights": code_weights, "source": source}
        n, self.dim = codes.shape
        if lc.znormalize and n < 2:
            raise CLIError(f"--znormalize needs at least 2 codes to take a standard deviation over; there is {n}")
        mean, std = codes.mean(0), codes.std(0)
        self.z = ((codes - mean) / std if lc.znormalize else codes).to(device)
        self.extra.update(z_mean=mean if lc.znormalize else None, z_std=std if lc.znormalize else None)
        self.process = code_process(lc)
        torch.manual_seed(cfg.training.seed)
        self.network = build_latent(lc, self.dim).to(device)

    def settings(self, log_every: int) -> LoopSettings:
        lc = self.config.latent
        return LoopSettings(max_steps=lc.max_steps or lc.total_samples // lc.batch_size, batch_size=lc.batch_size,
                            save_every=max(1, lc.save_every_samples // lc.batch_size), log_every=log_every,
                            grad_clip=lc.grad_clip, precision=lc.precision, ema=EMASchedule(decay=lc.ema_decay),
                            desc="latent",
                            unit="codes")

    def optimizer(self):
        lc = self.config.latent
        return torch.optim.AdamW(self.network.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)

    def loss_module(self):
        return CodeLoss(self.network, self.process)

    def batch(self, step: int):
        batch, device = self.config.latent.batch_size, self.device
        g = rng(self.config.training.seed, "latent", step)
        idx = torch.randperm(len(self.z), generator=g)[:batch]
        t = self.process.draw_t(batch, g).to(device)
        noise = torch.randn(batch, self.dim, generator=g).to(device)
        return dict(z0=self.z[idx.to(device)], t=t, noise=noise), []

    def describe(self, start: int) -> str:
        lc = self.config.latent
        return (f"latent run {self.run}: {len(self.z)} codes of width {self.dim}, {count_params(self.network):,} "
                f"parameters, batch {lc.batch_size}, {lc.precision}, from step {start} to "
                f"{lc.max_steps or lc.total_samples // lc.batch_size}")

    def checkpoint_base(self) -> dict:
        return C.make(FAMILY, self.config_dict(), {DENOISER: self.denoiser}, extra=self.extra)
