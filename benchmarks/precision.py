"""Accuracy of the half-precision paths: relative error of canvas_eps against the fp32 reference.

    python -m benchmarks.precision --preset nature --size 128x256 --precision bf16,fp16 [--compile default]
    python -m benchmarks.precision --smoke

Random weights with the zero-initialised output convolutions re-initialised (otherwise eps is exactly 0 and every
precision agrees). Also reports the error of the fp32 network whose weights were only rounded to the half type:
the part of the error no half-precision kernel can remove.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from benchmarks.common import emit, environment
from configs import get_preset
from model.patchdm.api import guided_canvas_eps
from model.patchdm import build_unet
from runtime.device import DTYPES, autocast, pick_device
from runtime.cli import parse_hw
from model.patchdm.fast import speed_up


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nature")
    ap.add_argument("--size", default="128x256", help="canvas HxW")
    ap.add_argument("--precision", default="bf16,fp16", help="comma-separated half types")
    ap.add_argument("--cfg_scale", type=float, default=0.0)
    ap.add_argument("--compile", default="none", help="torch.compile mode of the half-precision network")
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument("--timesteps", default="30,500,950")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="append JSONL rows here")
    ap.add_argument("--smoke", action="store_true", help="small preset, CPU")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.size, args.timesteps, args.device = "small", "32x48", "500", args.device or "cpu"
    device = pick_device(args.device)
    cfg = get_preset(args.preset)
    torch.manual_seed(0)
    net = build_unet(cfg.model).eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d)) and not m.weight.any():
            torch.nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5)
    net = net.to(device)
    p, hw = cfg.model.patch_size, parse_hw(args.size)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, *hw, generator=g).to(device)
    code = torch.randn(1, cfg.model.code_dim, generator=g).to(device)
    fast = speed_up(copy.deepcopy(net), args.compile, args.channels_last)
    rows, env = [], environment(device)
    for precision in args.precision.split(","):
        dt = DTYPES[precision]
        rounded = copy.deepcopy(net)
        with torch.no_grad():
            for prm in rounded.parameters():
                prm.copy_(prm.to(dt).float())
        for ts in args.timesteps.split(","):
            t = torch.tensor([int(ts)], device=device)
            with torch.no_grad():
                ref = guided_canvas_eps(net, x, t, code, p, args.cfg_scale)
                with autocast(device, precision):
                    half = guided_canvas_eps(fast, x, t, code, p, args.cfg_scale)
                w_only = guided_canvas_eps(rounded, x, t, code, p, args.cfg_scale)
            rows.append({**env, "preset": args.preset, "size": args.size, "precision": precision, "t": int(ts),
                         "cfg": args.cfg_scale, "compile": args.compile, "rel_err": rel(half, ref),
                         "rel_err_weights_only": rel(w_only, ref)})
    emit(rows, args.out, ["precision", "t", "cfg", "compile", "rel_err", "rel_err_weights_only"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
