"""FID (against pytorch-fid and the definition) and the seam ratio (planted seams)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from metrics import fid as F
from metrics.seams import boundary_masks, seam_ratio, seam_stats
from runtime.errors import run_cli
from tests.helpers import load_script as _load_script

fid_cli = _load_script("fid")
seams_cli = _load_script("seams")


# ----------------------------------------------------------------------------------------------- Fréchet distance
def _definition(mu1, s1, mu2, s2):
    """||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) with scipy's general matrix square root."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_the_definition():
    rng = np.random.default_rng(0)
    for n, d in [(50, 8), (300, 32), (20, 16)]:  # the last is rank-deficient, as FID with few images
        a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        b = rng.normal(0.3, 1.0, size=(n, d)) @ rng.normal(size=(d, d))
        (mu1, s1), (mu2, s2) = F.statistics(a), F.statistics(b)
        ours, ref = F.frechet_distance(mu1, s1, mu2, s2), _definition(mu1, s1, mu2, s2)
        assert ours == pytest.approx(ref, rel=1e-6)
        assert F.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8 * np.trace(s1))
    # closed form for diagonal covariances: sum (sqrt(a) - sqrt(b))^2 + ||mu diff||^2
    va, vb = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    mu = rng.normal(size=5)
    want = ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum() + (mu ** 2).sum()
    assert F.frechet_distance(mu, np.diag(va), np.zeros(5), np.diag(vb)) == pytest.approx(want, rel=1e-12)
    with pytest.raises(F.FIDError):
        F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------------------------- FID end to end
@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_images")
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:32, 0:48]
    for name, noise in (("a", 10), ("b", 60)):
        (root / name).mkdir()
        for i in range(24):
            base = np.stack([x * (3 + i % 4), y * 5, (x + y) * 2 + 20 * i], -1) % 256
            img = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_kid_matches_a_hand_computation():
    """With one subset of every feature, KID is the unbiased MMD^2 under (x.y/d + 1)^3, written out as loops."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (7, 3)), rng.normal(0.5, 1, (6, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 6  # the smaller side: every y, and 6 of the 7 x drawn by the seed
    xs = x[np.random.default_rng(5).choice(7, m, replace=False)]
    same = sum(k(xs[i], xs[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(xs[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = F.kernel_distance(x, y, subsets=1, subset_size=10, seed=5)
    assert mean == pytest.approx(same - 2 * cross, rel=1e-12) and std == 0.0
    # the same distribution scores near 0 (unbiased: either sign), a shifted one clearly above
    a, b = rng.normal(0, 1, (400, 8)), rng.normal(0, 1, (400, 8))
    near, _ = F.kernel_distance(a, b, subsets=20, subset_size=200)
    far, _ = F.kernel_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(near) < 0.05 < far


def test_fid_equals_pytorch_fid(random_weights, image_sets, tmp_path, monkeypatch, capsys):
    from pytorch_fid import fid_score
    out = tmp_path / "fid.json"
    args = ["--gen", str(image_sets / "a"), "--real", str(image_sets / "b"), "--config", "none", "--weights",
            str(random_weights), "--dims", "64", "--device", "cpu", "--workers", "0", "-b", "7", "--out", str(out)]
    assert run_cli(fid_cli.main, [*args, "--untrusted_weights"]) == 0
    ours = json.loads(out.read_text())
    assert "not an FID" in ours["metric"] and ours["genuine_weights"] is False
    # KID from the same features: the features of both folders through the same kernel estimate
    model, _ = F.load_inception(random_weights, "cpu", 64, allow_untrusted=True)
    from metrics.images import open_images
    feats = [F.activations(model, open_images(str(image_sets / s), None, None), 7) for s in "ab"]
    mean, std = F.kernel_distance(*feats)
    assert ours["kid"]["mean"] == pytest.approx(mean, rel=1e-9) and ours["kid"]["std"] == pytest.approx(std, rel=1e-9)
    assert "not a KID" in ours["kid"]["metric"] and ours["kid"]["mean"] > 0
    state = torch.load(random_weights, weights_only=True)
    monkeypatch.setattr("pytorch_fid.inception.load_state_dict_from_url", lambda *a, **k: state)
    ref = fid_score.calculate_fid_given_paths([str(image_sets / "a"), str(image_sets / "b")], 50, "cpu", 64,
                                              num_workers=0)
    assert ref > 1e-3  # the weights make the test meaningful
    assert ours["value"] == pytest.approx(ref, rel=1e-3)
    # the same weights with a genuine-looking hash: now it is called FID
    monkeypatch.setattr(F, "SHA256_PREFIX", F.sha256(random_weights)[:8])
    capsys.readouterr()
    assert run_cli(fid_cli.main, [*args, "--overwrite"]) == 0
    assert json.loads(out.read_text())["metric"].startswith("FID-64")


def test_fid_refuses_untrusted_or_missing_weights(random_weights, image_sets, tmp_path, capsys, monkeypatch):
    args = ["--gen", str(image_sets / "a"), "--real", str(image_sets / "b"), "--device", "cpu", "--dims", "64"]
    assert run_cli(fid_cli.main, [*args, "--weights", str(random_weights)]) == 2
    err = capsys.readouterr()
    assert "refusing to report an FID" in err.err and "FID" not in err.out
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    assert run_cli(fid_cli.main, args) == 2
    assert F.WEIGHTS_NAME in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not weights")
    assert run_cli(fid_cli.main, [*args, "--weights", str(junk), "--untrusted_weights"]) == 2


def test_real_statistics_are_cached(random_weights, image_sets, tmp_path, capsys):
    cache = tmp_path / "real.npz"
    base = ["--real", str(image_sets / "b"), "--config", "tiny", "--weights", str(random_weights), "--dims", "64",
            "--device", "cpu", "--workers", "0", "--untrusted_weights", "--real_stats", str(cache)]
    assert run_cli(fid_cli.main, base) == 0 and cache.is_file()
    mu, sigma, meta, feats = F.load_stats(cache)
    assert mu.shape == (64,) and sigma.shape == (64, 64) and meta["n"] == "24" and meta["image_size"] == "16x24"
    assert feats.shape == (24, 64) and np.allclose(feats.mean(axis=0), mu, atol=1e-5)  # KID's side of the cache
    capsys.readouterr()
    assert run_cli(fid_cli.main, [*base, "--gen", str(image_sets / "a")]) == 0
    assert "real statistics from" in capsys.readouterr().out
    before = cache.read_bytes()
    assert run_cli(fid_cli.main, [*base, "--num_real", "10"]) == 2  # other images: never replaced unasked
    assert "--overwrite" in capsys.readouterr().err and cache.read_bytes() == before
    assert run_cli(fid_cli.main, [*base, "--num_real", "10", "--overwrite"]) == 0  # recomputed and replaced
    assert "recomputing" in capsys.readouterr().out and cache.read_bytes() != before
    assert run_cli(fid_cli.main, ["--gen", str(image_sets / "a"), "--real", str(cache), "--weights",
                                  str(random_weights), "--dims", "64", "--device", "cpu", "--workers", "0",
                                  "--untrusted_weights"]) == 0


# ----------------------------------------------------------------------------------------------- seam ratio
def _smooth(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(x / 7) + np.cos(y / 5), np.sin((x + y) / 11), np.cos(x / 3 - y / 9)], -1) * 80 + 128
    return img + rng.normal(0, 3, img.shape)


def _planted(img, p, strength, offset=0, seed=1):
    rng = np.random.default_rng(seed)
    out = img.copy()
    for r0 in range(-offset, img.shape[0], p):
        for c0 in range(-offset, img.shape[1], p):
            out[max(0, r0):r0 + p, max(0, c0):c0 + p] += rng.normal(0, strength)
    return out


def test_boundary_masks_pick_the_grid_lines():
    bx, by = boundary_masks(16, 24, 8)
    assert bx.shape == (16, 23) and by.shape == (15, 24)
    assert np.flatnonzero(bx[0]).tolist() == [7, 15] and np.flatnonzero(by[:, 0]).tolist() == [7]
    bx, _ = boundary_masks(16, 24, 8, offset=4)
    assert np.flatnonzero(bx[0]).tolist() == [3, 11, 19]


def test_seam_ratio_sees_planted_seams_only():
    p = 8
    clean = [_smooth(64, 96, s) for s in range(4)]
    seamed = [_planted(im, p, 12.0, seed=s) for s, im in enumerate(clean)]
    shifted = [_planted(im, p, 12.0, offset=p // 2, seed=s) for s, im in enumerate(clean)]
    c, s, h = seam_stats(clean, p, (0, 4)), seam_stats(seamed, p, (0, 4)), seam_stats(shifted, p, (0, 4))
    assert abs(c[0]["mean"] - 1) < 0.05 and abs(c[4]["mean"] - 1) < 0.05 and c[0]["n"] == 4
    assert s[0]["mean"] > 1.5 and abs(s[4]["mean"] - 1) < 0.1  # seams on the image grid, not on the shifted grid
    assert h[4]["mean"] > 1.5 and abs(h[0]["mean"] - 1) < 0.1
    assert seam_ratio(np.zeros((16, 16)), p) != seam_ratio(np.zeros((16, 16)), p)  # flat: nan, not a number


def test_seams_cli(tmp_path, capsys):
    gen, real = tmp_path / "gen", tmp_path / "real"
    gen.mkdir(), real.mkdir()
    for i in range(3):
        Image.fromarray(np.clip(_planted(_smooth(32, 48, i), 8, 25.0, seed=i), 0, 255).astype(np.uint8)).save(
            gen / f"{i}.png")
        Image.fromarray(np.clip(_smooth(16, 24, i + 5), 0, 255).astype(np.uint8)).save(real / f"{i}.png")
    out = tmp_path / "seams.json"
    assert run_cli(seams_cli.main, ["--images", str(gen), "--patch", "8", "--real", str(real), "--config", "tiny",
                                    "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["generated"]["0"]["mean"] > 1.5 > res["real"]["0"]["mean"] and res["real"]["0"]["n"] == 3
    assert "generated" in capsys.readouterr().out
    assert run_cli(seams_cli.main, ["--images", str(tmp_path / "missing"), "--patch", "8"]) == 2
    # real images from an LMDB, read through the preset's geometry, iterated to the end
    import img2lmdb
    assert run_cli(img2lmdb.main, ["-i", str(real), "-o", str(tmp_path / "real.lmdb"), "-n", "1"]) == 0
    assert run_cli(seams_cli.main, ["--images", str(gen), "--patch", "8", "--real", str(tmp_path / "real.lmdb"),
                                    "--config", "tiny", "--num", "2", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["real"]["0"]["n"] == 2
    assert run_cli(seams_cli.main, ["--images", str(gen), "--patch", "8", "--real", str(tmp_path / "real.lmdb"),
                                    "--config", "tiny", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["real"]["0"]["n"] == 3
