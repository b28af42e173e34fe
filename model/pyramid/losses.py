"""The pyramid autoencoder's training loss, after latent diffusion's LPIPSWithDiscriminator: L1 reconstruction + a
small KL to N(0, I) for every latent, optionally LPIPS (with the VGG16 backbone's weights from a local file) and a
hinge patch-GAN (taming-transformers' NLayerDiscriminator) from a chosen step, weighted adaptively.

Weights, per image: ``l1`` = mean |x - x_rec| over the image's values; ``kl`` = kl_weight * (sum of every latent's
KL) / (number of image values). This is latent diffusion's sum(|x - x_rec|) + kl_weight * sum(KL) divided by the
number of values (its learned log-variance is left at its initial 0), so kl_weight keeps latent diffusion's meaning.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import CLIError


def ae_terms(x: torch.Tensor, rec: torch.Tensor, posteriors: list, kl_weight: float) -> dict:
    """{"l1": (B,), "kl": (B,)} of the module docstring."""
    values = x[0].numel()
    kl = sum(p.kl() for p in posteriors)
    return {"l1": (x - rec.float()).abs().flatten(1).mean(dim=1), "kl": kl_weight * kl / values}


# -- LPIPS ---------------------------------------------------------------------------------------------------------

VGG_FILE = "vgg16-397923af.pth"


def lpips_from_file(path) -> nn.Module:
    """lpips.LPIPS(net='vgg') with its backbone's weights read from ``path`` (torchvision's VGG16 state dict,
    e.g. vgg16-397923af.pth); the package's own linear heads. Nothing is downloaded: a missing package or file is one
    line."""
    try:
        import lpips
    except ImportError:
        raise CLIError("--lpips needs the lpips package (pip install lpips)") from None
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise CLIError(f"--lpips {path}: no such file; give torchvision's VGG16 weights ({VGG_FILE}, copied from a "
                       "machine with internet), or leave --lpips out")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"--lpips {path}: not a readable weights file ({str(e).splitlines()[0]})") from None
    model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    target = {}
    for name, _ in model.net.named_parameters():  # sliceN.<index>.weight
        index = name.split(".", 1)[1]
        if index not in features:
            raise CLIError(f"--lpips {path}: not torchvision's VGG16 weights (no features.{index})")
        target[name] = features[index]
    try:
        model.net.load_state_dict(target)
    except RuntimeError as e:
        raise CLIError(f"--lpips {path}: the weights do not fit VGG16 ({str(e).splitlines()[0]})") from None
    return model.eval().requires_grad_(False)


# -- the patch-GAN -------------------------------------------------------------------------------------------------

class PatchDiscriminator(nn.Sequential):
    """PatchGAN (pix2pix; taming-transformers' NLayerDiscriminator): 4x4 convs, stride 2 for the first ``layers``,
    batch norm and LeakyReLU(0.2), one logit per patch."""

    def __init__(self, layers: int = 3, channels: int = 64, in_channels: int = 3):
        mods = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = channels
        for n in range(1, layers + 1):
            out = channels * min(2 ** n, 8)
            mods += [nn.Conv2d(ch, out, 4, 2 if n < layers else 1, 1, bias=False), nn.BatchNorm2d(out),
                     nn.LeakyReLU(0.2, True)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        super().__init__(*mods)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Latent diffusion's balance: |grad rec| / |grad g| at the decoder's last layer, clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
