"""The Pyramid Diffusion Model's autoencoder and its parts (model/pyramid): the paper's Eq. (8) and Fig. 3,
attention properties, spectral norm, the skip paths, the pyramid's shapes, decoding with latents left out, the loss,
and the train -> reconstruct command lines."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from configs import get_preset, override
from model.pyramid import (LinearAttention, SpatialAttention, SpatialChannelAttention, build_autoencoder,
                           sc_weights)
from model.pyramid.autoencoder import DiagonalGaussian
from model.pyramid.layers import UpPath, up_image
from model.pyramid.losses import ae_terms
from runtime.errors import run_cli
from tests.conftest import randomize
from tests.helpers import load_script

# The paper's Fig. 3: level, height (= width), channels, spatial weight, channel weight
FIG3 = [(1, 1024, 16, 1.0000, 0.0000), (2, 512, 32, 0.9999, 0.0001), (3, 256, 64, 0.9990, 0.0010),
        (4, 128, 128, 0.9922, 0.0078), (5, 64, 256, 0.9412, 0.0588), (6, 32, 512, 0.6667, 0.3333),
        (7, 16, 1024, 0.2000, 0.8000), (8, 8, 1024, 0.0588, 0.9412)]


def test_spatial_channel_weights_are_the_papers_figure_3():
    for _, h, c, spatial, channel in FIG3:
        a, b = sc_weights(h * h, c)
        assert (round(a, 4), round(b, 4)) == (spatial, channel)
        assert a + b == pytest.approx(1.0, abs=1e-15)
    assert sc_weights(4, 12) == (0.25, 0.75)


def test_the_weights_come_from_the_feature_maps_shape():
    """The block re-weights its branches by the shape it is given: a map of 4 pixels and 12 channels takes a quarter
    of the spatial branch and three quarters of the channel branch."""
    torch.manual_seed(0)
    att = randomize(SpatialChannelAttention(12, zero_init=False), std=0.3)
    x = torch.randn(2, 12, 2, 2)
    with torch.no_grad():
        h = att.norm(x)
        assert torch.allclose(att(x), x + 0.25 * att.spatial(h) + 0.75 * att.channel(h), atol=1e-6)


@pytest.mark.parametrize("cls", [LinearAttention, SpatialAttention, SpatialChannelAttention])
def test_zero_initialised_attention_is_the_identity(cls):
    att = cls(16)
    x = torch.randn(2, 16, 6, 8)
    assert torch.equal(att(x), x)
    randomize(att)  # and it is not the identity once trained
    assert (att(x) - x).abs().max() > 1e-3


@pytest.mark.parametrize("full_max", [4096, 8])  # full softmax attention over pixels, and the linear form above 8
def test_spatial_channel_attention_is_equivariant_to_pixel_permutations(full_max):
    torch.manual_seed(1)
    att = randomize(SpatialChannelAttention(8, full_attention_max=full_max, zero_init=False), std=0.3)
    x = torch.randn(2, 8, 4, 6)
    perm = torch.randperm(24)
    shuffle = lambda t: t.flatten(2)[..., perm].reshape(t.shape)  # noqa: E731
    with torch.no_grad():
        assert torch.allclose(att(shuffle(x)), shuffle(att(x)), atol=1e-5)
        y = x.clone()
        y[..., 0, 0] += 1.0  # one pixel moves every output pixel: it attends
        assert ((att(y) - att(x))[..., 1:, :].abs().max()) > 1e-4


def tiny_ae(**over):
    cfg = get_preset("pyramid_tiny")
    for k, v in over.items():
        setattr(cfg.autoencoder, k, v)
    torch.manual_seed(0)
    return build_autoencoder(cfg.autoencoder)


def largest_singular_value(weight: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2).item()


def test_spectral_norm_keeps_the_encoders_singular_values_near_one_and_the_decoder_has_none():
    ae = tiny_ae()
    ae.train()
    for _ in range(30):  # the power iteration runs once per training forward
        ae.encode(torch.randn(2, 3, 16, 24))
    convs = [m for m in ae.encoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    sigmas = [largest_singular_value(m.weight) for m in convs]
    assert all(abs(s - 1) < 0.05 for s in sigmas), sigmas
    assert not any(hasattr(m, "parametrizations") for m in ae.decoder.modules())
    plain = tiny_ae(spectral_norm=False)  # without it the weights keep their own scale
    assert max(abs(largest_singular_value(m.weight) - 1) for m in plain.encoder.modules()
               if isinstance(m, torch.nn.Conv2d)) > 0.2


@pytest.mark.parametrize("preset,hw,width", [("pyramid_small", (64, 128), 8), ("pyramid_2k", (1024, 2048), 2)])
def test_every_latent_has_its_shape(preset, hw, width):
    cfg = get_preset(preset)
    cfg.autoencoder.channels = width  # a narrow copy: the layout is what is tested
    ae = build_autoencoder(cfg.autoencoder).eval()
    with torch.no_grad():
        posts = ae.encode(torch.randn(1, 3, *hw))
    shapes = [tuple(p.mean.shape[1:]) for p in posts]
    assert shapes == [tuple(s) for s in ae.latent_shapes(*hw)]
    want = {"pyramid_small": [(8, 8, 16), (16, 4, 8), (32, 2, 4)],
            "pyramid_2k": [(32, 16, 32), (64, 8, 16), (128, 4, 8), (256, 2, 4)]}[preset]
    assert shapes == want
    values = sum(math.prod(s) for s in shapes)
    assert round(3 * hw[0] * hw[1] / values, 1) == {"pyramid_small": 13.7, "pyramid_2k": 204.8}[preset]


def test_decoding_with_latents_left_out():
    ae = randomize(tiny_ae(spectral_norm=False), std=0.1)
    with torch.no_grad():
        zs = [p.mean for p in ae.encode(torch.randn(2, 3, 16, 24))]
        full = ae.decode(zs)
        outs = {keep: ae.decode(zs, set(keep)) for keep in [(0,), (1,), (0, 1)]}
        assert torch.equal(outs[(0, 1)], full) and full.shape == (2, 3, 16, 24)
        for keep in [(0,), (1,)]:
            assert outs[keep].shape == full.shape and torch.isfinite(outs[keep]).all()
            assert (outs[keep] - full).abs().max() > 1e-3
        changed = [z.clone() for z in zs]
        changed[1] += 1.0  # what is left out does not matter
        assert torch.equal(ae.decode(changed, {0}), outs[(0,)])
        with pytest.raises(ValueError, match="at least one latent"):
            ae.decode(zs, set())


def test_kl_of_a_standard_normal_posterior_is_zero():
    moments = torch.cat([torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)], dim=1)  # mean 0, log-variance 0
    assert torch.equal(DiagonalGaussian(moments).kl(), torch.zeros(2))
    other = DiagonalGaussian(torch.cat([torch.ones(1, 1, 1, 2), torch.full((1, 1, 1, 2), math.log(4.0))], dim=1))
    assert other.kl().item() == pytest.approx(2 * 0.5 * (1 + 4 - 1 - math.log(4.0)))


def test_the_loss_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    x, rec = torch.rand(2, 3, 4, 6, generator=g) * 2 - 1, torch.rand(2, 3, 4, 6, generator=g) * 2 - 1
    posts = [DiagonalGaussian(torch.randn(2, 4, 2, 3, generator=g)), DiagonalGaussian(torch.randn(2, 2, 1, 1,
                                                                                               generator=g))]
    terms = ae_terms(x, rec, posts, kl_weight=0.5)
    for i in range(2):
        l1 = sum(abs(a - b) for a, b in zip(x[i].flatten().tolist(), rec[i].flatten().tolist())) / 72
        kl = 0.0
        for p in posts:
            for m, lv in zip(p.mean[i].flatten().tolist(), p.logvar[i].flatten().tolist()):
                kl += 0.5 * (m * m + math.exp(lv) - 1 - lv)
        assert terms["l1"][i].item() == pytest.approx(l1, rel=1e-5)
        assert terms["kl"][i].item() == pytest.approx(0.5 * kl / 72, rel=1e-5)


def test_res_skip_carries_both_paths():
    """res_skip: the residual feature pyramid feeds h (p = h = (upconv(p) + h) / sqrt 2) and every level adds its
    toRGB to the up-sampled image; output_skip only the latter; none only a final head."""
    torch.manual_seed(0)
    path = randomize(UpPath([8, 4], "res_skip"), std=0.2)
    h0, h1 = torch.randn(1, 8, 2, 3), torch.randn(1, 4, 4, 6)
    y, p = path.start(h0)
    assert torch.allclose(y, path.to_rgb[0](h0)) and torch.allclose(p, path.res_start(h0))
    h, (y1, p1) = path.step(1, h1, (y, p))
    want = (path.res_up[0](p) + h1) / math.sqrt(2)
    assert torch.allclose(h, want) and torch.allclose(p1, want)
    assert torch.allclose(y1, up_image(y) + path.to_rgb[1](want))
    assert torch.equal(path.output(h, (y1, p1)), y1)
    skip = UpPath([8, 4], "output_skip")
    assert skip.res_up is None and skip.head is None
    none = UpPath([8, 4], "none")
    assert none.to_rgb is None and none.output(h1, none.start(h0)).shape == (1, 3, 4, 6)


# -- the command lines ---------------------------------------------------------------------------------------------

def train_ae(lmdb_path, runs, name, steps, *extra):
    train = load_script("train")
    return run_cli(train.main, ["--config", "pyramid_tiny", "-d", str(lmdb_path), "-n", name, "--max_steps",
                                str(steps), "--log_every", "1", "--device", "cpu", "--runs_dir", str(runs), *extra])


def image_folder(tmp_path):
    from tests.helpers import photo
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, name in enumerate(["a.jpg", "b.png", "c.jpeg"]):
        Image.fromarray(photo(40, 64, 10 + i)).save(folder / name)
    return folder


def test_train_then_reconstruct_through_the_command_lines(lmdb_path, tmp_path, capsys):
    photos = image_folder(tmp_path)
    runs = tmp_path / "runs"
    assert train_ae(lmdb_path, runs, "ae", 3, "--set", "ae_training.ema_decay=0.5") == 0
    run = runs / "ae"
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all({"l1", "kl"} <= set(r) for r in rows)
    assert json.loads((run / "config.json").read_text())["family"] == "pyramid"
    assert (run / "samples" / "0000003.png").exists()  # input | reconstruction
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["family"] == "pyramid" and ck["networks"]["autoencoder"]["step"] == 3
    test = load_script("test")
    out = tmp_path / "rec"
    assert run_cli(test.main, ["-f", str(run / "checkpoints" / "last.pt"), "--reconstruct", str(photos), "-g",
                               str(out), "--device", "cpu", "-b", "2"]) == 0
    made = sorted(p.name for p in out.iterdir())
    assert made == ["a.png", "b.png", "c.png"] and all(Image.open(out / m).size == (24, 16) for m in made)
    capsys.readouterr()
    only = tmp_path / "only"
    assert run_cli(test.main, ["-f", str(run / "checkpoints" / "last.pt"), "--reconstruct", str(photos), "-g",
                               str(only), "--device", "cpu", "--levels", "1"]) == 0
    a, b = (np.asarray(Image.open(d / made[0])).astype(int) for d in (out, only))
    assert np.abs(a - b).max() > 0  # without the finest latent the image changes


def test_reconstruct_refuses_bad_input_in_one_line(lmdb_path, photos, tmp_path, capsys):
    """Bad --levels, a missing folder, a pyramid checkpoint without --reconstruct, an unreadable image, Patch-DM flags
    for a pyramid preset, a missing LPIPS file: one line each, nothing written."""
    runs = tmp_path / "runs"
    assert train_ae(lmdb_path, runs, "ae", 1) == 0
    ck = str(runs / "ae" / "checkpoints" / "last.pt")
    test = load_script("test")
    capsys.readouterr()
    mine = image_folder(tmp_path)
    for args, msg in [(["-f", ck, "--reconstruct", str(mine), "--levels", "2"], "0..1"),
                      (["-f", ck, "--reconstruct", str(tmp_path / "nowhere")], "not a folder"),
                      (["-f", ck, "--reconstruct", str(photos)], "broken.jpg"),
                      (["-f", ck], "--reconstruct DIR")]:
        assert run_cli(test.main, [*args, "-g", str(tmp_path / "x"), "--device", "cpu"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "x").exists()
    for args, msg in [(["--semantic_path", "x.pt"], "does not apply"), (["--lpips", str(tmp_path / "vgg.pth")],
                                                                        "no such file")]:
        assert train_ae(lmdb_path, runs, "bad", 1, *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert not (runs / "bad").exists()


def test_resume_is_exact_with_the_gan(lmdb_path, tmp_path):
    runs = tmp_path / "runs"
    gan = ["--gan_from", "1"]
    assert train_ae(lmdb_path, runs, "straight", 4, *gan) == 0
    assert train_ae(lmdb_path, runs, "cut", 2, *gan) == 0
    assert train_ae(lmdb_path, runs, "cut", 4, *gan) == 0
    rows = {n: [json.loads(line) for line in (runs / n / "stats.jsonl").read_text().splitlines()]
            for n in ("straight", "cut")}
    assert [r["loss"] for r in rows["cut"]] == [r["loss"] for r in rows["straight"]]
    assert rows["straight"][0]["gan"] == 0 and rows["straight"][-1]["gan"] != 0 and "disc" in rows["straight"][-1]
    a, b = (torch.load(runs / n / "checkpoints" / "last.pt", weights_only=True) for n in ("straight", "cut"))
    for net in ("autoencoder", "discriminator"):
        assert all(torch.equal(a["networks"][net]["raw"][k], b["networks"][net]["raw"][k])
                   for k in a["networks"][net]["raw"])


def test_lpips_with_a_local_backbone_file(lmdb_path, tmp_path):
    """--lpips FILE: the VGG16 weights come from the file (random ones here), and the term joins the loss."""
    tv = pytest.importorskip("torchvision")
    pytest.importorskip("lpips")
    from model.pyramid.losses import lpips_from_file
    vgg = tv.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    lp = lpips_from_file(path)
    assert torch.equal(lp.net.slice1[0].weight, vgg.features[0].weight)
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    assert lp(x, x).abs().max() < 1e-6 and lp(x, x.flip(0)).min() > 0
    assert train_ae(lmdb_path, tmp_path / "runs", "lp", 1, "--lpips", str(path)) == 0
    row = json.loads((tmp_path / "runs" / "lp" / "stats.jsonl").read_text().splitlines()[-1])
    assert row["lpips"] > 0 and row["loss"] == pytest.approx(row["l1"] + row["kl"] + row["lpips"], rel=1e-5)


def test_the_pyramid_presets_validate_and_name_their_family():
    for name in ("pyramid_tiny", "pyramid_small", "pyramid_single", "pyramid_2k"):
        cfg = get_preset(name).validate()
        assert cfg.family == "pyramid"
    with pytest.raises(ValueError, match="coarsest latent"):
        override(get_preset("pyramid_small"), ["autoencoder.latent_levels=[2,3,4]"]).validate()


def test_random_crops_are_a_function_of_seed_step_and_sample(lmdb_path):
    """crop_view: inside the image, zoom x the crop size, the same for the same (seed, step, k); the dataset brings
    the region to the crop size and mirrors it."""
    from dataset import ImageDataset
    from model.pyramid.training import crop_view
    from runtime.images import View
    views = [crop_view((40, 64), (8, 16), (1.0, 2.0), True, 0, step, k) for step in range(20) for k in range(4)]
    assert views[5] == crop_view((40, 64), (8, 16), (1.0, 2.0), True, 0, 1, 1)
    assert len(set(views)) == len(views)
    for v in views:
        assert 0 <= v.top and v.top + v.height <= 40 and 0 <= v.left and v.left + v.width <= 64 and v.out == (8, 16)
        assert 8 <= v.height <= 16 and 16 <= v.width <= 32
    assert 0.3 < sum(v.flip for v in views) / len(views) < 0.7
    assert crop_view((40, 64), (0, 0), (1.0, 1.0), False, 0, 3, 1) == View(0, 0, 40, 64)
    data = ImageDataset(lmdb_path, (40, 64), "resize_crop", (40, 64))
    whole = data[0][0]
    x, _ = data[(0, View(4, 8, 16, 32, (8, 16), True))]
    want = torch.nn.functional.interpolate(whole[None, :, 4:20, 8:40], size=(8, 16), mode="bilinear",
                                           antialias=True, align_corners=False)[0].flip(-1)
    assert x.shape == (3, 8, 16) and torch.allclose(x, want, atol=1e-6)
