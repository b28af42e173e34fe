"""Initial semantic codes: one CLIP image embedding per training image (official initialize.py; FAITHFULNESS.md:
Semantic codes).

    python initialize.py --data_path data/nature.lmdb --out_path data/nature_semantic.pt
    python initialize.py -d data/nature.lmdb -o sem.pt --clip_pretrained ~/ViT-B-16.pt   # OpenAI's original file

CLIP is open_clip's ViT-B-16-quickgelu with OpenAI's weights (the model the official code loads with
clip.load("ViT-B/16")). Each stored image (without the training transform) goes through CLIP's own preprocessing
(shorter side to 224, bicubic; centre crop 224; CLIP mean/std), and the projected image embedding, NOT normalised,
becomes row `index` of the table. Weights are never downloaded unless --allow_download is given: without them
this fails within seconds and says which file to provide.

Output: {'model_state_dict': {'semantic_enc.weight': FloatTensor[N, 512]}}, the official layout, read by train.py.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dataset import DataError, ImageDataset
from runtime.device import pick_device
from runtime.cli import ArgumentParser, nonnegative_int, positive_int
from runtime.errors import CLIError, one_line, run_cli
from runtime.files import atomic_save, check_new_file

CLIP_MODEL = "ViT-B-16-quickgelu"  # Faithful: OpenAI ViT-B/16 (QuickGELU), FAITHFULNESS.md: Semantic codes
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _local_weights(model: str, tag: str, cache_dir: str | None) -> str | None:
    """Path of already-downloaded weights for an open_clip (model, tag), looking only at local caches."""
    import open_clip
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        raise CLIError(f"open_clip has no pretrained tag {tag!r} for {model}; known tags: "
                       f"{', '.join(open_clip.list_pretrained_tags_by_model(model))}")
    if cfg.get("hf_hub"):
        from huggingface_hub import hf_hub_download
        repo, filename = os.path.split(cfg["hf_hub"])
        for name in ([filename] if filename else HF_FILES):
            try:
                return hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=True)
            except Exception:
                pass
    if cfg.get("url"):
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(path):
            return path
    return None


def _missing_message(model: str, tag: str) -> str:
    import open_clip
    cfg = open_clip.get_pretrained_cfg(model, tag)
    where = []
    if cfg.get("hf_hub"):
        where.append(f"the Hugging Face repo {cfg['hf_hub'].rstrip('/')} (file {HF_FILES[1]}) into the HF cache")
    if cfg.get("url"):
        where.append(f"OpenAI's {os.path.basename(cfg['url'])} into ~/.cache/clip/")
    return (f"CLIP weights {model}/{tag} are not on this machine. Copy {' or '.join(where)}, or pass the file "
            "with --clip_pretrained PATH; --allow_download fetches them when online; --clip_pretrained none "
            "uses random weights for smoke tests")


def load_clip(model: str, pretrained: str, device, allow_download: bool = False, cache_dir=None):
    """(clip_model, preprocess). pretrained: an open_clip tag, a local checkpoint file, or 'none' (random)."""
    import open_clip
    if pretrained.lower() == "none":
        warnings.warn("RANDOM CLIP WEIGHTS (--clip_pretrained none): the codes are meaningless; smoke tests only")
        print("WARNING: using RANDOM CLIP weights (--clip_pretrained none); only for smoke tests", file=sys.stderr)
        clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    else:
        path = os.path.expanduser(pretrained)
        if not os.path.isfile(path):
            path = _local_weights(model, pretrained, cache_dir)
            if path is None and not allow_download:
                raise CLIError(_missing_message(model, pretrained))
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=path or pretrained,
                                                                         cache_dir=cache_dir)
        except Exception as e:
            raise CLIError(f"cannot load CLIP weights {path or pretrained}: {str(e).splitlines()[0]}") from None
    return clip.to(device).eval().float(), preprocess


class _ClipView(Dataset):
    """The raw stored images with CLIP's preprocessing instead of the training transform."""

    def __init__(self, data: ImageDataset, preprocess):
        self.data, self.preprocess = data, preprocess

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.preprocess(self.data.load(i)), i


@torch.no_grad()
def clip_codes(data: ImageDataset, clip, preprocess, device, batch_size=128, num_workers=4) -> torch.Tensor:
    """(N, D) un-normalised CLIP image embeddings, row i for image i."""
    loader = DataLoader(_ClipView(data, preprocess), batch_size=batch_size, shuffle=False, drop_last=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    table = None
    for imgs, idx in tqdm(loader, desc="CLIP", unit="batch"):
        emb = clip.encode_image(imgs.to(device)).float().cpu()
        if table is None:
            table = torch.empty(len(data), emb.shape[1])
        table[idx] = emb
    return table


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--data_path", "-d", default="./dataset", help="LMDB (or image folder) of the training images")
    ap.add_argument("--out_path", "-o", default="semantic", help="output file (official default name: semantic)")
    ap.add_argument("--clip_model", default=CLIP_MODEL, help="open_clip model name (default %(default)s)")
    ap.add_argument("--clip_pretrained", default="openai",
                    help="open_clip tag (default openai), a local checkpoint file (open_clip or OpenAI's original "
                         "ViT-B-16.pt), or 'none' for random weights (smoke tests only)")
    ap.add_argument("--allow_download", action="store_true", help="let open_clip download missing weights")
    ap.add_argument("--cache_dir", default=None, help="open_clip / Hugging Face cache folder")
    ap.add_argument("--batch_size", type=positive_int, default=128, help="images per CLIP batch (official 128)")
    ap.add_argument("--num_workers", type=nonnegative_int, default=4, help="DataLoader workers")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out_path file")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_new_file(args.out_path, args.overwrite)
    device = pick_device(args.device)
    data = ImageDataset(args.data_path)
    clip, preprocess = load_clip(args.clip_model, args.clip_pretrained, device, args.allow_download, args.cache_dir)
    try:
        table = clip_codes(data, clip, preprocess, device, args.batch_size, args.num_workers)
    except DataError as e:
        raise CLIError(f"{one_line(e)}: every image needs a code, so none may be unreadable (remove the file, or pack "
                       "the folder with img2lmdb.py, which skips unreadable files)") from None
    atomic_save({"model_state_dict": {"semantic_enc.weight": table}}, args.out_path)
    print(f"wrote {table.shape[0]} x {table.shape[1]} semantic codes to {args.out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
