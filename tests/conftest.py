import numpy as np
import pytest
import torch
from PIL import Image

from configs import get_preset
from model.patchdm import build_encoder, build_latent, build_unet
from tests.helpers import photo, snapshot


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Non-trivial weights everywhere (the real init zeroes output convs, which would hide most bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # norm scales near 1
                p.copy_(1 + std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture
def tiny_cfg():
    return get_preset("tiny")


@pytest.fixture
def tiny_unet(tiny_cfg):
    torch.manual_seed(0)
    return randomize(build_unet(tiny_cfg.model))


@pytest.fixture
def tiny_unet64(tiny_unet):
    """The tiny U-Net in float64, for tests that compare two evaluation orders of the same canvas (banded against
    whole). In float32 they differ by rounding that a random network amplifies over a few sampling steps, by an
    amount that depends on the CPU's kernels (1e-5 here, 3e-3 elsewhere); in float64 they agree to ~1e-12, so a
    tight bound still catches a real band bug (which is O(0.1))."""
    return tiny_unet.double()


@pytest.fixture
def tiny_latent(tiny_cfg):
    torch.manual_seed(0)
    return randomize(build_latent(tiny_cfg.latent, tiny_cfg.model.code_dim), std=0.1)


@pytest.fixture
def tiny_encoder(tiny_cfg):
    torch.manual_seed(0)
    return randomize(build_encoder(tiny_cfg.model))



@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder with 6 good images of assorted kinds, a corrupt JPEG, a text file and a nested folder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(photo(40, 64, i)).save(root / f"img{i}.jpg", quality=95)
    Image.fromarray(photo(40, 64, 5)).convert("CMYK").save(root / "sub" / "cmyk.JPG")
    a16 = (np.linspace(0, 65535, 40 * 64).reshape(40, 64)).astype(np.uint16)
    Image.fromarray(a16).save(root / "sub" / "gray16.png")
    rgba = Image.fromarray(photo(64, 40, 6)).convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display: stored 64x40 (HxW) becomes 40x64
    rgba.convert("RGB").save(root / "sub" / "deeper" / "rotated.jpeg", exif=exif)
    good = (root / "img0.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / "fake.png").write_text("also not an image")
    return root


@pytest.fixture(scope="session")
def lmdb_path(photos, tmp_path_factory):
    """The photos packed by img2lmdb.py at their original sizes (6 readable images)."""
    import img2lmdb
    from runtime.errors import run_cli
    out = tmp_path_factory.mktemp("data") / "tiny.lmdb"
    before = snapshot(photos)
    assert run_cli(img2lmdb.main, ["-i", str(photos), "-o", str(out), "-n", "2"]) == 0
    assert snapshot(photos) == before  # the user's files are untouched
    return out


@pytest.fixture(scope="session")
def codes(lmdb_path, tmp_path_factory):
    """A code table for ``lmdb_path`` from a randomly initialised CLIP (initialize.py --clip_pretrained none)."""
    import initialize
    from runtime.errors import run_cli
    out = tmp_path_factory.mktemp("codes") / "semantic.pt"
    assert run_cli(initialize.main, ["-d", str(lmdb_path), "-o", str(out), "--clip_pretrained", "none",
                                     "--device", "cpu", "--num_workers", "0", "--batch_size", "4"]) == 0
    table = torch.load(out, weights_only=True)["model_state_dict"]["semantic_enc.weight"]
    assert table.shape == (6, 512) and table.std() > 0
    return out


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """Freshly initialised but non-trivial Inception weights (Kaiming convs, identity batch-norms): features of
    order 0.1 that differ between images. The default init gives ~1e-8 features and FID ~ 0 for anything."""
    from metrics import fid as F
    net = F.fid_architecture()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, generator=g)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1), m.bias.zero_(), m.running_mean.zero_(), m.running_var.fill_(1)
    path = tmp_path_factory.mktemp("inception") / F.WEIGHTS_NAME
    torch.save(net.state_dict(), path)
    return path
