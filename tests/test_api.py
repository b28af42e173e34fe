"""The Python API (model/generator.py) and the exported folder (export.py, training/export.py): the same images as
test.py for the same seed, in both families; a folder without pickle that loads wherever a checkpoint does; the model
card and generation.json; one-line refusals."""

import io
import json

import pytest
import torch
from safetensors import safe_open

from model.generator import Generator
from runtime.errors import UserError, run_cli
from runtime.files import to_pil
from tests.helpers import load_script, train_run
from tests.test_pyramid import train_ae

sample = load_script("test")
export = load_script("export")
train_latent = load_script("train_latent")


@pytest.fixture(scope="module")
def patchdm(lmdb_path, codes, tmp_path_factory):
    """A train.py checkpoint (3 steps) and the full checkpoint of a 3-step code DDPM on it (tiny preset)."""
    runs = tmp_path_factory.mktemp("api_runs")
    assert train_run(lmdb_path, codes, runs, "exp", 3, "--objective", "v") == 0
    train_ck = runs / "exp" / "checkpoints" / "last.pt"
    assert run_cli(train_latent.main, ["-m", str(train_ck), "-n", "lat", "--max_steps", "3", "--device", "cpu",
                                       "--runs_dir", str(runs), "--znormalize"]) == 0
    return train_ck, runs / "lat" / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def pyramid(lmdb_path, tmp_path_factory):
    """A pyramid full checkpoint: a 2-step autoencoder and a 2-step flow model on it (pyramid_tiny)."""
    runs = tmp_path_factory.mktemp("api_pyramid")
    assert train_ae(lmdb_path, runs, "ae", 2) == 0
    assert run_cli(train_latent.main, ["-m", str(runs / "ae" / "checkpoints" / "last.pt"), "-n", "flow",
                                       "--max_steps", "2", "--device", "cpu", "--runs_dir", str(runs)]) == 0
    return runs / "flow" / "checkpoints" / "last.pt"


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def cli_pngs(ck, out, *flags) -> dict:
    assert run_cli(sample.main, ["-f", str(ck), "-g", str(out), "--device", "cpu", *flags]) == 0
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


PATCHDM_SETTINGS = dict(seed=3, steps=4, latent_steps=4, sampler="ddim")
PATCHDM_FLAGS = ["--seed", "3", "--steps", "4", "--latent_steps", "4", "--sampler", "ddim"]


def test_api_images_are_test_py_pngs_patchdm(patchdm, tmp_path):
    _, full = patchdm
    pngs = cli_pngs(full, tmp_path / "cli", "--img_num", "3", "-b", "2", *PATCHDM_FLAGS)
    gen = Generator(full, device="cpu")
    images = gen(3, batch_size=2, **PATCHDM_SETTINGS)
    assert [png_bytes(img) for img in images] == [pngs[f"{k}.png"] for k in range(3)]
    # image numbers pick images out of the same sequence; tensors are the same images
    picked = gen([2, 0], batch_size=2, **PATCHDM_SETTINGS)
    assert [png_bytes(img) for img in picked] == [pngs["2.png"], pngs["0.png"]]
    x = gen(1, output="tensor", **PATCHDM_SETTINGS)
    assert x.shape == (1, 3, *gen.cfg.sampling.image_size) and -1 <= float(x.min()) and float(x.max()) <= 1
    assert png_bytes(to_pil(x[0])) == pngs["0.png"]
    # another seed, other images
    assert png_bytes(gen(1, seed=4, steps=4, latent_steps=4)[0]) != pngs["0.png"]


def test_api_codes_and_settings_match_test_py(patchdm, tmp_path):
    train_ck, _ = patchdm
    pngs = cli_pngs(train_ck, tmp_path / "cli", "--codes", "2,0", "--raw", "--image_size", "16x32", "--wrap", "x",
                    "--seamless", *PATCHDM_FLAGS[:4])
    gen = Generator(train_ck, raw=True, device="cpu")
    images = gen(codes=[2, 0], image_size=(16, 32), wrap="x", seamless="shift", seed=3, steps=4)
    assert [png_bytes(img) for img in images] == [pngs["0.png"], pngs["1.png"]]
    table = gen.impl.unet.code_source.weight.detach()
    by_tensor = gen(codes=table[[2, 0]], image_size="16x32", wrap="x", seamless="shift", seed=3, steps=4)
    assert [png_bytes(img) for img in by_tensor] == [pngs["0.png"], pngs["1.png"]]


def test_api_images_are_test_py_pngs_pyramid(pyramid, tmp_path):
    pngs = cli_pngs(pyramid, tmp_path / "cli", "--img_num", "2", "--steps", "3", "--seed", "5")
    images = Generator(pyramid, device="cpu")(2, seed=5, steps=3)
    assert [png_bytes(img) for img in images] == [pngs["0.png"], pngs["1.png"]]


def test_api_refuses_bad_settings_in_one_line(patchdm, pyramid):
    train_ck, full = patchdm
    gen = Generator(full, device="cpu")
    for kwargs, words in [(dict(steps=2000), "1000"), (dict(image_size="15x32"), "divisible"),
                          (dict(sampler="rk45"), "rk45"), (dict(colour=1), "not a setting"),
                          (dict(output="png"), "pil or tensor"), (dict(codes=[99]), "rows")]:
        with pytest.raises(UserError, match=words):
            gen(1, **kwargs)
    with pytest.raises(UserError, match="no latent model"):
        Generator(train_ck, device="cpu")(1)
    with pytest.raises(UserError, match="Patch-DM option"):
        Generator(pyramid, device="cpu")(1, codes=[0])


@pytest.fixture(scope="module")
def exported(patchdm, tmp_path_factory):
    _, full = patchdm
    out = tmp_path_factory.mktemp("export") / "model"
    assert run_cli(export.main, ["-f", str(full), "-o", str(out), "--figures", "PSNR 1.0 dB (a test)"]) == 0
    return out


def test_export_folder_holds_no_pickle_and_gives_the_same_images(patchdm, exported, tmp_path):
    _, full = patchdm
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.json",
                                                           "model.safetensors"]
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("denoiser.") for k in keys) and any(k.startswith("code_ddpm.") for k in keys)
    assert {"extra.z_mean", "extra.z_std"} <= set(keys)  # the code statistics of the z-normalised code DDPM
    # the checkpoint's EMA weights, not its raw ones
    ck = torch.load(full, weights_only=True)
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        name = next(k for k in keys if k.startswith("code_ddpm."))
        assert torch.equal(f.get_tensor(name), ck["networks"]["code_ddpm"]["ema"][name[len("code_ddpm."):]])
    assert cli_pngs(exported, tmp_path / "f", "--img_num", "2", *PATCHDM_FLAGS) == \
        cli_pngs(full, tmp_path / "c", "--img_num", "2", *PATCHDM_FLAGS)
    a = Generator(exported, device="cpu")(2, output="tensor", **PATCHDM_SETTINGS)
    b = Generator(full, device="cpu")(2, output="tensor", **PATCHDM_SETTINGS)
    assert torch.equal(a, b)


def test_export_model_card_and_info_name_the_real_settings(patchdm, exported):
    _, full = patchdm
    ck = torch.load(full, weights_only=True)
    info = json.loads((exported / "model.json").read_text())
    assert info["family"] == "patchdm" and info["weights"] == "ema" and info["dtype"] == "float32"
    assert info["networks"]["denoiser"]["step"] == ck["networks"]["denoiser"]["step"] == 3
    assert info["networks"]["code_ddpm"]["samples"] == ck["networks"]["code_ddpm"]["samples"]
    assert json.loads((exported / "config.json").read_text()) == json.loads(json.dumps(ck["config"]))
    card = (exported / "README.md").read_text()
    cfg = ck["config"]
    for words in ["Patch-DM", "| preset | tiny |", "v (1000 diffusion steps)", "3 steps",
                  f"{ck['networks']['denoiser']['samples']} training samples seen", cfg["data"]["path"],
                  "PSNR 1.0 dB (a test)", "EMA, float32", "Generator("]:
        assert words in card, words


def test_export_raw_half_precision_and_pyramid(patchdm, pyramid, tmp_path):
    train_ck, _ = patchdm
    out = tmp_path / "raw16"
    assert run_cli(export.main, ["-f", str(train_ck), "-o", str(out), "--raw", "--dtype", "float16"]) == 0
    ck = torch.load(train_ck, weights_only=True)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        w = f.get_tensor(next(k for k in f.keys() if k.startswith("denoiser.") and k.endswith("weight")))
    assert w.dtype == torch.float16
    gen = Generator(out, device="cpu")  # a raw export samples its raw weights without being told
    assert gen.raw
    half = gen(codes=[1], seed=3, steps=4, output="tensor")
    full_precision = Generator(train_ck, raw=True, device="cpu")(codes=[1], seed=3, steps=4, output="tensor")
    assert 0 < float((half - full_precision).abs().max()) < 0.1  # rounded weights: close, not equal
    assert ck["networks"]["denoiser"]["raw"] is not None
    folder = tmp_path / "pyr"
    assert run_cli(export.main, ["-f", str(pyramid), "-o", str(folder)]) == 0
    assert torch.equal(Generator(folder, device="cpu")(1, steps=3, output="tensor"),
                       Generator(pyramid, device="cpu")(1, steps=3, output="tensor"))
    assert "latent rectified flow" in (folder / "README.md").read_text()


def test_export_and_folder_errors_are_one_line(patchdm, exported, tmp_path, capsys):
    _, full = patchdm
    rc = run_cli(export.main, ["-f", str(full), "-o", str(exported)])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "config.json", "README.md"):
        (broken / name).write_bytes((exported / name).read_bytes())
    for folder, words in [(broken, "holds no model.safetensors"), (tmp_path, "without model.json")]:
        rc = run_cli(sample.main, ["-f", str(folder), "-g", str(tmp_path / "o"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    rc = run_cli(sample.main, ["-f", str(exported), "-g", str(tmp_path / "o"), "--device", "cpu", "--raw"])
    assert rc == 2 and "EMA weights only" in capsys.readouterr().err
    rc = run_cli(export.main, ["-f", str(full), "-o", str(tmp_path / "x"), "--dtype", "int8"])
    assert rc == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_generation_json_records_how_images_were_made(patchdm, tmp_path):
    _, full = patchdm
    out = tmp_path / "g"
    cli_pngs(full, out, "--img_num", "2", *PATCHDM_FLAGS)
    rec = json.loads((out / "generation.json").read_text())
    import hashlib
    assert rec["checkpoint_sha256"] == hashlib.sha256(full.read_bytes()).hexdigest()
    assert rec["family"] == "patchdm" and rec["step"] == 3 and rec["weights"] == "ema"
    assert (rec["sampler"], rec["steps"], rec["seed"], rec["latent_steps"]) == ("ddim", 4, 3, 4)
    assert rec["precision"] == "fp32" and rec["image_size"] == [16, 24] and rec["guidance"] == 0.0
    assert rec["images"] == 2 and rec["networks"]["denoiser"]["step"] == 3
    assert "commit" in rec


def test_young_ema_is_a_python_warning_and_a_cli_line(patchdm, tmp_path, capsys):
    import warnings
    from runtime.errors import ProjectWarning
    _, full = patchdm
    with pytest.warns(ProjectWarning, match="still holds 100% of the initial weights"):
        Generator(full, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProjectWarning)
        Generator(full, raw=True, device="cpu")  # the raw weights: nothing to warn about
    cli_pngs(full, tmp_path / "o", "--img_num", "1", *PATCHDM_FLAGS)
    lines = [line for line in capsys.readouterr().err.splitlines() if "still holds" in line]
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines)  # denoiser and latent MLP


def test_a_long_batch_shows_its_steps(capsys):
    """run_steps' progress: True shows the step bar, False none, a number only once the steps take that long."""
    from diffusion import FlowProcess
    from diffusion.samplers import run_steps
    import time
    process = FlowProcess(3)

    def slow(x, i):  # a step that takes longer than tqdm's refresh interval
        time.sleep(0.12)
        return x

    for progress, shown in [(True, True), (False, False), (1e6, False), (1e-3, True)]:
        run_steps(slow, torch.zeros(1), process, progress, desc="steps")
        assert ("steps" in capsys.readouterr().err) is shown, progress


def test_api_paint_is_paint_py(patchdm, tmp_path):
    from PIL import Image
    train_ck, _ = patchdm
    gen = Generator(train_ck, raw=True, device="cpu", cast_weights=False)
    h, w = gen.cfg.sampling.image_size
    Image.fromarray(((torch.arange(h * w * 3) * 7919) % 256).reshape(h, w, 3).byte().numpy()).save(tmp_path / "i.png")
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[4:12, 8:16] = 255
    Image.fromarray(mask.numpy()).save(tmp_path / "m.png")
    flags = dict(mask=str(tmp_path / "m.png"), num=2, seed=1, fit_steps=2, steps=4, resample=2)
    assert run_cli(load_script("paint").main, ["inpaint", "-f", str(train_ck), "-i", str(tmp_path / "i.png"), "-m",
                                              flags["mask"], "-o", str(tmp_path / "o.png"), "--num", "2", "--seed",
                                              "1", "--fit_steps", "2", "--steps", "4", "--resample", "2", "--raw",
                                              "--device", "cpu"]) == 0
    images = gen.paint("inpaint", str(tmp_path / "i.png"), progress=False, **flags)
    assert [png_bytes(img) for img in images] == [(tmp_path / f"o_{k}.png").read_bytes() for k in range(2)]
    with pytest.raises(UserError, match="one-step sampler"):
        gen.paint("inpaint", str(tmp_path / "i.png"), mask=flags["mask"], sampler="dpmpp2m")
