"""Export a trained model as a small folder to hand to someone else: its config, one set of weights as safetensors (no
pickle, no optimizer), and a model card.

    python export.py -f runs/v_latent/checkpoints/last.pt -o models/v_small            # EMA weights, float32
    python export.py -f runs/v/checkpoints/last.pt -o models/v_raw --raw --dtype float16
    python export.py -f last.pt -o models/m --figures "PSNR 20.7 dB to the training photos (8 photos, DDIM-50)"
    python test.py -f models/v_small -g out --img_num 8       # a folder loads wherever a checkpoint does

The folder (training/export.py): config.json, model.safetensors (every network that samples: Patch-DM's denoiser and
its code DDPM, the pyramid's autoencoder and flow model; the code statistics), model.json (family, which weights,
steps and samples seen) and README.md (the model card). test.py, paint.py and model.generator.Generator load it and
make the same images as the checkpoint (float32; float16 / bfloat16 halve the file and round the weights). An
existing folder is refused unless --overwrite is given, which replaces those four files only.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

from model import FAMILIES, read
from configs import from_dict
from runtime.cli import ArgumentParser
from runtime.errors import CLIError, run_cli
from training.export import CARD_FILE, CONFIG_FILE, DTYPES, INFO_FILE, WEIGHTS_FILE, write_folder


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--full_path", "-f", required=True, help="checkpoint file (any this project reads)")
    ap.add_argument("--output", "-o", required=True, help="the folder to write")
    ap.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="how the weights are stored")
    ap.add_argument("--figures", action="append", default=[], metavar="TEXT",
                    help="a measured figure for the model card (repeat for more)")
    ap.add_argument("--name", default=None, help="the model's name on its card (default: the output folder's)")
    ap.add_argument("--overwrite", action="store_true", help="replace an exported model already in --output")
    return ap


def card(name: str, folder: str, source: str, family: str, cfg, ck: dict, weights: str, dtype: str, facts: list,
         example: tuple, figures: list) -> str:
    """The model card: what the model is, how it was trained, how to generate with it."""
    nets = ck["networks"]
    rows = [("family", {"patchdm": "Patch-DM (Ding et al., ICLR 2024)",
                        "pyramid": "Pyramid Diffusion Model (arXiv 2403.12915)"}.get(family, family)),
            ("preset", cfg.name), *facts, ("weights", f"{weights.upper() if weights == 'ema' else weights}, {dtype}")]
    rows += [(f"{net} network", f"{e['step'] if e['step'] is not None else '?'} steps, "
                                f"{e['samples'] if e['samples'] is not None else '?'} training samples seen")
             for net, e in nets.items()]
    lines = [f"# {name}", "", f"A {rows[0][1]} model exported on {date.today().isoformat()} from `{source}`.", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += ["## Generate", "", "From the project's folder:", "", "```bash",
              f"python test.py -f {folder} -g samples {example[0]}", "```", "", "```python",
              "from model.generator import Generator", "", f"gen = Generator({folder!r})",
              f"images = gen({example[1]})   # PIL images, the same as test.py's PNGs", "```", ""]
    lines += ["## Measured", ""] + ([f"- {f}" for f in figures] if figures else ["Nothing was given at export."])
    lines += ["", "## Files", "", f"`{CONFIG_FILE}` the training config, `{WEIGHTS_FILE}` the weights, "
              f"`{INFO_FILE}` family, weights and training steps, `{CARD_FILE}` this card.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"--output {out} is not empty: pass --overwrite to replace an exported model in it, or give "
                       "a new folder")
    ck = read(args.full_path)
    if ck["extra"].get("export"):
        raise CLIError(f"{args.full_path} is already an exported folder; export from its checkpoint")
    family = FAMILIES[ck["family"]]
    cfg = from_dict(ck["config"])
    sds = family.export_weights(ck, args.full_path, args.raw)
    nets = {n: (sd, ck["networks"][n]["step"], ck["networks"][n]["samples"]) for n, sd in sds.items()}
    weights = "raw" if args.raw else "ema"
    name = args.name or out.name
    text = card(name, args.output, args.full_path, ck["family"], cfg,
                {**ck, "networks": {n: ck["networks"][n] for n in sds}}, weights, args.dtype,
                family.card_facts(cfg, ck), family.example(cfg, ck), args.figures)
    left_out = write_folder(out, ck["family"], ck["config"], nets, ck["extra"], weights, args.dtype, text)
    size = (out / WEIGHTS_FILE).stat().st_size
    print(f"wrote {out}: {', '.join(nets)} ({weights}, {args.dtype}, {size / 2 ** 20:.1f} MiB)"
          + (f"; left out (training state): {', '.join(left_out)}" if left_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
