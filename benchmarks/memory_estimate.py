"""Peak GPU memory of sampling and training, estimated on any machine: no GPU is needed.

    python -m benchmarks.memory_estimate --sizes 512x1024,4096x8192 --batches 1 --bands auto,1x32
    python -m benchmarks.memory_estimate --train --batch 96 --precision bf16 [--checkpointing]
    python -m benchmarks.memory_estimate --smoke

The network runs on fake CUDA tensors (torch's FakeTensorMode: shapes, dtypes and devices, no data and no
arithmetic), and every tensor storage is counted from its allocation to its release, rounded up to the CUDA caching
allocator's 512-byte blocks. The peak of those live bytes is what ``torch.cuda.max_memory_allocated`` reports, less
what cannot be seen here: cuBLAS / cuDNN workspaces and the allocator's rounding of large blocks. Against the H100
measurements in docs/BENCHMARKS.md the sampling estimate reads 4-12% low. Parameters, inputs, the autocast weight
cache, Adam's state and the EMA are all counted. Sampling runs 2 DDIM steps (the peak is reached within a step).
"""

from __future__ import annotations

import argparse
import sys
import warnings
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from benchmarks.common import emit
from configs import get_preset
from model.patchdm.api import ddim_sample_canvas
from diffusion import make_process
from model.patchdm.sampling import sample_canvas, sampling_process
from model.patchdm import CanvasOptions, Denoiser, build_patchdm, build_unet
from runtime.device import DTYPES
from model.patchdm.cli import parse_bands
from runtime.cli import parse_hw
from model.patchdm.fast import cast_weights, set_checkpointing
from model.patchdm.seamless import parse

BLOCK = 512  # bytes: the CUDA caching allocator rounds every allocation up to this


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages on one device type; ``peak`` is their maximum so far.

    Storages created by operators inside the mode are counted automatically; ``track`` adds tensors that existed
    before (parameters, inputs). A storage is uncounted when it is garbage-collected."""

    def __init__(self, device_type: str = "cuda"):
        super().__init__()
        self.device_type, self.current, self.peak = device_type, 0, 0
        self._seen = WeakIdKeyDictionary()

    def track(self, *tensors) -> "LiveBytes":
        for t in tensors:
            storage = t.untyped_storage()
            if t.device.type != self.device_type or storage in self._seen:
                continue
            n = -(-storage.nbytes() // BLOCK) * BLOCK
            self._seen[storage] = n
            self.current += n
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, n)
        return self

    def _release(self, n: int) -> None:
        self.current -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)))
        return out


def fake_mode():
    """A fresh FakeTensorMode (fake tensors of two modes cannot meet; reusing one mode for two training traces
    corrupts the heap at exit with torch 2.14), admitting real CPU tensors such as the cached diffusion schedule,
    which is built here from real tensors first."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    make_process()
    return FakeTensorMode(allow_non_fake_inputs=True)


@contextmanager
def fake_autocast(device_type: str, precision: str):
    """Autocast for fake tensors of ``device_type``; for CUDA without a CUDA driver (torch.autocast checks for one),
    the same dispatcher state that torch.autocast sets."""
    if precision == "fp32":
        yield
        return
    if device_type != "cuda":
        with torch.autocast(device_type, dtype=DTYPES[precision]):
            yield
        return
    before = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), torch.is_autocast_cache_enabled())
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", DTYPES[precision])
    torch.set_autocast_cache_enabled(True)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", before[0])
        torch.set_autocast_dtype("cuda", before[1])
        torch.set_autocast_cache_enabled(before[2])


def sampling_peak(preset: str, hw: tuple, batch: int, precision: str = "bf16", bands: str = "auto",
                  cfg_scale: float = 0.0, steps: int = 2, sampler: str = "ddim", seamless=None) -> float:
    """Estimated peak bytes of ``ddim_sample_canvas`` (``sample_canvas`` with another sampler: 3 steps, so a
    multistep solver's history is live) as benchmarks/sample_speed.py and test.py run it; seamless: a Seamless
    (model/patchdm/seamless.py) or None."""
    cfg = get_preset(preset)
    p = cfg.model.patch_size
    br, bc = parse_bands(bands, batch * (2 if cfg_scale else 1), hw, p)
    sched = None
    if sampler != "ddim":  # built here, from real numbers, with its step constants read before the fake tensors
        sched = sampling_process(cfg.diffusion, sampler, max(steps, 3))
        sched.alpha_sigma(0)
    with fake_mode(), torch.no_grad():
        with torch.device("cuda"):
            unet = cast_weights(build_unet(cfg.model).eval(), precision)
            x_T = torch.randn(batch, 3, *hw)
            code = torch.randn(batch, cfg.model.code_dim)
        live = LiveBytes().track(*unet.parameters(), *unet.buffers(), x_T, code)
        with live, fake_autocast("cuda", precision):
            if sampler == "ddim":
                ddim_sample_canvas(unet, x_T, code, steps=steps, patch_size=p, cfg_scale=cfg_scale, band_rows=br,
                                   band_cols=bc, in_place=True, seamless=seamless)
            else:
                sample_canvas(Denoiser(unet, p), x_T, code, sched, sampler,
                              CanvasOptions(cfg_scale, br, bc, in_place=True, seamless=seamless))
    return live.peak


def training_peak(preset: str, batch: int, precision: str = "bf16", checkpointing: bool = False,
                  num_codes: int = 1000, steps: int = 2, checkpoint_levels: int = 0) -> float:
    """Estimated peak bytes of benchmarks/train_speed.py's step (images as tensors on the GPU): the window loss,
    backward, clipping, Adam and EMA, with the model, its gradients, Adam's state and the EMA resident.

    Traced on fake CPU tensors: autograd's engine needs a CUDA driver for CUDA tensors, fake or not. The forward runs
    the same operators on either device (in fp32 a forward pass allocates the same bytes on the CPU as on fake CUDA
    tensors, tests/test_memory.py), Adam uses its CUDA default (foreach), but in half precision CPU autocast differs
    in a few operators (nearest upsampling runs in bf16 on the CPU, in fp32 under CUDA autocast), which can make this
    read low. At batch 96 in bf16 (nature) it reads 48.7 GiB against 48.8 GiB measured on an H100."""
    from training.ema import EMA
    from training.loop import optimizer_step
    from training.meter import total
    from model.patchdm.training import LossStep
    cfg = get_preset(preset)
    tc, p, (h, w) = cfg.training, cfg.model.patch_size, cfg.data.image_size
    with fake_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")  # EMA's deepcopy
        with torch.device("cpu"):
            net = set_checkpointing(build_patchdm(cfg.model, num_codes, torch.randn(num_codes, cfg.model.code_dim)),
                                    checkpointing, checkpoint_levels).train()
            x0 = torch.rand(batch, 3, h, w) * 2 - 1
            index = torch.randint(0, num_codes, (batch,))
        live = LiveBytes("cpu").track(*net.parameters(), *net.buffers(), x0, index)
        with live:
            ema = EMA(net, tc.ema_decay)
            step_fn = LossStep(net, p, (h, w))
            opt = torch.optim.Adam(net.parameters(), lr=tc.lr, foreach=True)  # the CUDA default
            scaler = torch.amp.GradScaler("cpu", enabled=False)  # fp16's scaler holds no tensors worth counting
            for _ in range(steps):
                t = torch.randint(0, cfg.diffusion.num_timesteps, (batch,))
                noise = torch.randn(batch, 3, 2 * p, 2 * p)
                with fake_autocast("cpu", precision):
                    terms = step_fn(x0, index, t, noise, (0, 0))  # memory is the same at any window
                # the trainer's step
                optimizer_step(net.parameters(), opt, scaler, total(terms), tc.grad_clip)
                ema.update(net)
    return live.peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nature")
    ap.add_argument("--sizes", default="512x1024", help="sampling: comma-separated HxW")
    ap.add_argument("--batches", default="1,4", help="sampling: comma-separated batch sizes")
    ap.add_argument("--precision", default="bf16", help="comma-separated: fp32, fp16, bf16")
    ap.add_argument("--bands", default="auto", help="sampling: comma-separated; auto, off, R or RxC (as test.py)")
    ap.add_argument("--cfg_scale", type=float, default=0.0)
    ap.add_argument("--sampler", default="ddim", help="sampling: ddim, dpmpp2m, dpmpp3m (diffusion/samplers.py)")
    ap.add_argument("--seamless", default="off", help="sampling: off, shift, average or blend, METHOD:VIEWS for more "
                                                     "grids (test.py --seamless)")
    ap.add_argument("--train", action="store_true", help="estimate a training step instead of sampling")
    ap.add_argument("--batch", type=int, default=96, help="training batch")
    ap.add_argument("--checkpointing", action="store_true", help="training: activation checkpointing per block")
    ap.add_argument("--checkpoint_levels", type=int, default=0, help="with --checkpointing: only the N highest-"
                                                                     "resolution levels (0 = all)")
    ap.add_argument("--out", default=None, help="append JSONL rows here")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, small canvases, batch 2")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.sizes, args.batches, args.bands, args.batch = "tiny", "16x24,32x48", "1,2", "off,1x2", 2
    method, _, views = args.seamless.partition(":")
    seamless = parse(method, int(views) if views else None)
    rows = []
    for precision in args.precision.split(","):
        if args.train:
            peak = training_peak(args.preset, args.batch, precision, args.checkpointing,
                                 checkpoint_levels=args.checkpoint_levels)
            rows.append(dict(preset=args.preset, what="train", batch=args.batch, precision=precision,
                             checkpointing=args.checkpointing and (args.checkpoint_levels or "all"),
                             est_peak_gib=peak / 2 ** 30))
            continue
        for size in args.sizes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                for bands in args.bands.split(","):
                    peak = sampling_peak(args.preset, parse_hw(size), batch, precision, bands, args.cfg_scale,
                                         sampler=args.sampler, seamless=seamless)
                    rows.append(dict(preset=args.preset, what="sample", size=size, batch=batch, precision=precision,
                                     bands=bands, cfg=args.cfg_scale, sampler=args.sampler, seamless=args.seamless,
                                     est_peak_gib=peak / 2 ** 30))
    cols = (["batch", "precision", "checkpointing", "est_peak_gib"] if args.train
            else ["size", "batch", "precision", "bands", "cfg", "sampler", "seamless", "est_peak_gib"])
    emit(rows, args.out, cols)
    return 0


if __name__ == "__main__":
    sys.exit(main())
