"""FID with the TF-FID InceptionV3 of pytorch-fid (pool3, 2048-d), from a local weights file.

Network: ``pytorch_fid.inception.InceptionV3`` (the port of TensorFlow's 2015-12-05 Inception used by every
published FID, including the paper's pytorch-fid 0.2.0 pin). Its weights are never downloaded here: they
are read from a file (``--weights``) or from the torch hub cache, where pytorch-fid itself keeps them
(``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``). As torch hub does, the file is accepted as
genuine when its SHA-256 starts with the 8 hex digits in its name; other weights give a Fréchet distance that is
not an FID and is never called one.

Preprocessing equals pytorch-fid's: RGB uint8 -> [0, 1] -> bilinear resize to 299 x 299 -> [-1, 1]. The Fréchet
distance uses an eigendecomposition-based matrix square root in float64 (``frechet_distance``), which is exact for
the symmetric positive semi-definite covariances (scipy's sqrtm of the non-symmetric product is not needed).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime.errors import UserError
from runtime.files import atomic_savez

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
SHA256_PREFIX = "6726825d"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME


class FIDError(UserError):
    """Missing or wrong Inception weights, or unusable images."""


def default_weights_path() -> Path:
    """Where pytorch-fid / torch hub cache the TF-FID weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_weights(path=None) -> Path:
    """The weights file to use: ``path``, else the torch hub cache; FIDError naming the file when absent."""
    p = Path(path) if path else default_weights_path()
    if not p.is_file():
        raise FIDError(f"Inception weights not found at {p}: download {WEIGHTS_URL} on a machine with internet and "
                       f"pass it with --weights (or put it at {default_weights_path()})")
    return p


@contextlib.contextmanager
def _weights_from(state_dict):
    """Make pytorch-fid build its network with ``state_dict`` instead of downloading the weights."""
    import pytorch_fid.inception as inc
    saved = inc.load_state_dict_from_url
    inc.load_state_dict_from_url = lambda *a, **k: state_dict
    try:
        yield inc
    finally:
        inc.load_state_dict_from_url = saved


def fid_architecture() -> torch.nn.Module:
    """The FID Inception network (pytorch-fid's blocks) with freshly initialised weights: its state dict has the
    keys of the real weights file (used by the tests)."""
    import pytorch_fid.inception as inc
    net = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, cls, args in [("Mixed_5b", inc.FIDInceptionA, (192, 32)), ("Mixed_5c", inc.FIDInceptionA, (256, 64)),
                            ("Mixed_5d", inc.FIDInceptionA, (288, 64)), ("Mixed_6b", inc.FIDInceptionC, (768, 128)),
                            ("Mixed_6c", inc.FIDInceptionC, (768, 160)), ("Mixed_6d", inc.FIDInceptionC, (768, 160)),
                            ("Mixed_6e", inc.FIDInceptionC, (768, 192)), ("Mixed_7b", inc.FIDInceptionE_1, (1280,)),
                            ("Mixed_7c", inc.FIDInceptionE_2, (2048,))]:
        setattr(net, name, cls(*args))
    return net


def load_inception(weights=None, device="cpu", dims: int = 2048, allow_untrusted: bool = False):
    """(model, genuine): pytorch-fid's InceptionV3 returning the ``dims`` features, with the given weights file.

    genuine is True when the file's SHA-256 starts with 6726825d. Other weights raise FIDError unless
    allow_untrusted (then the caller must not call the result an FID).
    """
    path = find_weights(weights)
    genuine = sha256(path).startswith(SHA256_PREFIX)
    if not genuine and not allow_untrusted:
        raise FIDError(f"{path} is not the TF-FID Inception weights file (its SHA-256 does not start with "
                       f"{SHA256_PREFIX}): refusing to report an FID. Use {WEIGHTS_URL}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FIDError(f"cannot read Inception weights {path}: {e}") from None
    with _weights_from(state) as inc:
        if dims not in inc.InceptionV3.BLOCK_INDEX_BY_DIM:
            raise FIDError(f"dims {dims}: choose one of {sorted(inc.InceptionV3.BLOCK_INDEX_BY_DIM)}")
        try:
            model = inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
        except RuntimeError as e:
            raise FIDError(f"{path} does not hold the FID Inception's weights: {str(e).splitlines()[0]}") from None
    return model.eval().to(device), genuine


def _collate(batch):
    """uint8 (H, W, 3) arrays of one size -> float (B, 3, H, W) in [0, 1], as ToTensor."""
    shapes = {a.shape for a in batch}
    if len(shapes) > 1:
        raise FIDError(f"images of different sizes in one batch: {sorted(shapes)}; resize them to one size first")
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def activations(model, images, batch_size: int = 50, device="cpu", num_workers: int = 0,
                progress: str | None = None) -> np.ndarray:
    """(N, dims) float64 Inception features of a dataset of uint8 (H, W, 3) images."""
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate)
    feats = []
    for batch in tqdm(loader, desc=progress or "inception", disable=progress is None, leave=False, unit="batch"):
        f = model(batch.to(device))[0]
        if f.shape[-2:] != (1, 1):
            f = torch.nn.functional.adaptive_avg_pool2d(f, 1)
        feats.append(f.flatten(1).double().cpu())
    return torch.cat(feats).numpy()


def statistics(feats: np.ndarray) -> tuple:
    """(mu, sigma): feature mean and covariance (unbiased, as numpy's np.cov and pytorch-fid)."""
    if len(feats) < 2:
        raise FIDError("at least 2 images are needed for a covariance")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), in float64.

    tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2): S1 S2 is similar to the symmetric PSD matrix S1^1/2 S2 S1^1/2, so
    the trace is the sum of the square roots of that matrix's eigenvalues (eigh, negatives from round-off clipped).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise FIDError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kernel_distance(f_gen: np.ndarray, f_real: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple:
    """KID (Binkowski et al. 2018): the unbiased squared MMD between two feature sets under the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3, averaged over ``subsets`` random subsets of ``subset_size`` features of each side
    (drawn without replacement; at most the smaller set's size). Returns (mean, std over the subsets), float64."""
    f_gen, f_real = np.asarray(f_gen, np.float64), np.asarray(f_real, np.float64)
    if f_gen.shape[1:] != f_real.shape[1:]:
        raise FIDError(f"features of different dimensions: {f_gen.shape[1:]} vs {f_real.shape[1:]}")
    m = min(subset_size, len(f_gen), len(f_real))
    if m < 2:
        raise FIDError("at least 2 images on each side are needed for KID")
    d, rng = f_gen.shape[1], np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = f_gen[rng.choice(len(f_gen), m, replace=False)]
        y = f_real[rng.choice(len(f_real), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def save_stats(path, mu, sigma, features=None, **meta) -> None:
    """Cache statistics as .npz (mu, sigma, the features where given (KID needs them), and string metadata
    describing what they were computed from)."""
    arrays = {"mu": mu, "sigma": sigma, **({"features": features.astype(np.float32)} if features is not None else {})}
    atomic_savez(path, **arrays, **{f"meta_{k}": np.array(str(v)) for k, v in meta.items()})


def load_stats(path) -> tuple:
    """(mu, sigma, meta, features or None) of a .npz written by save_stats (or pytorch-fid's mu/sigma files: meta
    empty, no features)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = {k[5:]: str(f[k]) for k in f.files if k.startswith("meta_")}
            return f["mu"], f["sigma"], meta, (f["features"].astype(np.float64) if "features" in f.files else None)
    except (OSError, KeyError, ValueError) as e:
        raise FIDError(f"cannot read statistics {path}: {e}") from None
