"""FIR resampling by 2 (NCSN++'s up/down-sampling, after StyleGAN2): the separable [1, 3, 3, 1] filter applied
with zero insertion (up) or stride (down), in plain torch (the reference upfirdn2d compiles a CUDA extension on
import; this is its pure-torch form, tested against a direct implementation in tests/test_pyramid_flow.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TAPS = (1.0, 3.0, 3.0, 1.0)


def kernel(taps=TAPS, gain: float = 1.0) -> torch.Tensor:
    """The 2-D filter: the outer product of ``taps``, normalised to sum to ``gain``."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k * (gain / k.sum())


def upfirdn2d(x: torch.Tensor, k: torch.Tensor, up: int = 1, down: int = 1, pad: tuple = (0, 0)) -> torch.Tensor:
    """Each channel of x (N, C, H, W): insert up - 1 zeros after every sample, pad by pad[0] before and pad[1] after
    (both axes), convolve with k (a true convolution: k flipped), keep every down-th sample."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h, up, w, up)
        z[:, :, :, 0, :, 0] = x
        x = z.reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = k.flip(0, 1).to(x)[None, None].expand(c, 1, *k.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def up2(x: torch.Tensor) -> torch.Tensor:
    """x2 up-sampling (gain 4 keeps a constant image constant)."""
    k = kernel(gain=4.0)
    p = k.shape[0] - 2
    return upfirdn2d(x, k, up=2, pad=((p + 1) // 2 + 1, p // 2))


def down2(x: torch.Tensor) -> torch.Tensor:
    """x2 down-sampling (filter, then every other sample)."""
    k = kernel()
    p = k.shape[0] - 2
    return upfirdn2d(x, k, down=2, pad=((p + 1) // 2, p // 2))
