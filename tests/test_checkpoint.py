import os
import pickle
import sys
import types

import pytest
import torch

from model.patchdm.api import canvas_eps
from runtime.errors import CheckpointError
from model.patchdm import load_official_checkpoint
from tests.helpers import DATA, lightning_file, synthetic_state

@pytest.mark.slow
def test_full_official_listing_loads_every_key(tmp_path):
    sd = synthetic_state("official-state-dict-p64.tsv")
    path = lightning_file(tmp_path / "last.ckpt", sd, raw_changes={"encoder.semantic_enc.weight", "out.2.bias"})
    loaded = load_official_checkpoint(path)
    assert loaded.patch_size == 64 and loaded.encoder is None
    got = {k: v for k, v in loaded.unet.state_dict().items()}
    got.update({"latent_net." + k: v for k, v in loaded.latent_net.state_dict().items()})
    got["encoder.semantic_enc.weight"] = loaded.codes
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert not loaded.unet.training and next(loaded.unet.parameters()).dtype == torch.float32
    raw = load_official_checkpoint(path, ema=False)
    assert torch.equal(raw.codes, sd["encoder.semantic_enc.weight"] + 1)
    assert torch.equal(raw.unet.out[2].bias, sd["out.2.bias"] + 1)
    # and it runs
    with torch.no_grad():
        eps = canvas_eps(loaded.unet, torch.randn(1, 3, 64, 128), torch.tensor([500]), loaded.codes[:1], 64)
    assert eps.shape == (1, 3, 64, 128) and torch.isfinite(eps).all()


@pytest.mark.slow
def test_encoder_listing_loads(tmp_path):
    sd = synthetic_state("official-state-dict-p64-semantic-encoder.tsv")
    loaded = load_official_checkpoint(lightning_file(tmp_path / "enc.ckpt", sd))
    assert loaded.codes is None and loaded.latent_net is None and loaded.encoder is not None
    enc = {"encoder." + k: v for k, v in loaded.encoder.state_dict().items()}
    assert all(torch.equal(enc[k], sd[k]) for k in enc) and len(enc) == sum(k.startswith("encoder.") for k in sd)
    assert loaded.encoder(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def small_state():
    """The U-Net part of the official listing is needed whole; the latent MLP is dropped to keep tests fast."""
    sd = synthetic_state("official-state-dict-p64.tsv")
    return {k: v for k, v in sd.items() if not k.startswith("latent_net.")}


@pytest.fixture(scope="module")
def unet_state():
    return small_state()


def _fake_lightning_modules():
    """Classes that official checkpoints name but users do not have installed."""
    parsing = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = parsing.__name__, "AttributeDict"
    parsing.AttributeDict = AttributeDict
    callbacks = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = callbacks.__name__, "ModelCheckpoint"
    callbacks.ModelCheckpoint = ModelCheckpoint
    mods = {parsing.__name__: parsing, callbacks.__name__: callbacks}
    for name in ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.callbacks"]:
        mods[name] = types.ModuleType(name)
    mods["pytorch_lightning"].utilities = mods["pytorch_lightning.utilities"]
    mods["pytorch_lightning"].callbacks = mods["pytorch_lightning.callbacks"]
    mods["pytorch_lightning.utilities"].parsing = parsing
    mods["pytorch_lightning.callbacks"].model_checkpoint = callbacks
    return mods


def test_lightning_pickle_with_foreign_classes_loads(tmp_path, unet_state, monkeypatch):
    mods = _fake_lightning_modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    hp = mods["pytorch_lightning.utilities.parsing"].AttributeDict(lr=1e-4, name="nature")
    cb = mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
    path = lightning_file(tmp_path / "pl.ckpt", unet_state, extra={
        "hyper_parameters": hp, "callbacks": {cb: {"best_model_score": torch.tensor(0.1)}},
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 7}})
    for name in mods:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(pickle.UnpicklingError):  # proves the fallback is exercised
        torch.load(path, weights_only=True)
    loaded = load_official_checkpoint(path)
    assert torch.equal(loaded.codes, unet_state["encoder.semantic_enc.weight"])
    assert "pytorch_lightning.utilities.parsing" not in sys.modules


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_runs_no_code(tmp_path, unet_state):
    marker = tmp_path / "pwned"
    path = lightning_file(tmp_path / "evil.ckpt", unet_state, extra={"hyper_parameters": _Evil(marker)})
    load_official_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # an unrestricted load would run it: the test can fail
    assert marker.exists()


def test_non_tensor_weights_need_trust(tmp_path, unet_state):
    sd = dict(unet_state)
    sd["out.2.bias"] = _Evil(tmp_path / "x")
    path = lightning_file(tmp_path / "odd.ckpt", sd)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_official_checkpoint(path)
    assert not (tmp_path / "x").exists()


def test_missing_and_corrupt_files(tmp_path, unet_state):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_checkpoint(tmp_path / "nope.ckpt")
    good = lightning_file(tmp_path / "good.ckpt", unet_state)
    data = good.read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_official_checkpoint(tmp_path / "trunc.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_official_checkpoint(tmp_path / "junk.ckpt")


def test_mismatched_checkpoints_name_the_keys(tmp_path, unet_state):
    missing = {k: v for k, v in unet_state.items() if k != "output_blocks.4.0.out_layers.3.weight"}
    with pytest.raises(CheckpointError, match="missing output_blocks.4.0.out_layers.3.weight"):
        load_official_checkpoint(lightning_file(tmp_path / "a.ckpt", missing))
    reshaped = dict(unet_state)
    reshaped["middle_block.1.qkv.bias"] = torch.zeros(99)
    with pytest.raises(CheckpointError, match=r"middle_block.1.qkv.bias: file \(99,\)"):
        load_official_checkpoint(lightning_file(tmp_path / "b.ckpt", reshaped))
    extra = dict(unet_state)
    extra["discriminator.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="discriminator.weight"):
        load_official_checkpoint(lightning_file(tmp_path / "c.ckpt", extra))
    torch.save({"state_dict": {"model.foo": torch.zeros(1)}}, tmp_path / "d.ckpt")
    with pytest.raises(CheckpointError, match="no ema_model"):
        load_official_checkpoint(tmp_path / "d.ckpt")


def test_legacy_table_key_is_renamed(tmp_path, unet_state):
    sd = dict(unet_state)
    sd["semantic_enc.semantic_enc.weight"] = sd.pop("encoder.semantic_enc.weight")
    loaded = load_official_checkpoint(lightning_file(tmp_path / "legacy.ckpt", sd))
    assert torch.equal(loaded.codes, sd["semantic_enc.semantic_enc.weight"])


def test_untied_latent_linear_is_refused(tmp_path):
    sd = synthetic_state("official-state-dict-p64.tsv")
    sd["latent_net.layers.3.linear_emb.bias"] = sd["latent_net.layers.3.linear_emb.bias"] + 1
    with pytest.raises(CheckpointError, match="tied"):
        load_official_checkpoint(lightning_file(tmp_path / "untied.ckpt", sd))


# ------------------------------------------------------------------------------------------------ this project's files
def test_files_written_by_the_first_format_still_load(tmp_path, capsys):
    """tests/data/v1: a train.py and a train_latent.py checkpoint written by commit 57a99bd (tiny preset with 8-d
    codes), and what that version computed from them (expected.pt). They load, give the same numbers, and sample."""
    from model.patchdm.api import ddim_sample_latent
    from model import load
    from runtime.errors import run_cli
    from tests.helpers import load_script
    exp = torch.load(DATA / "v1" / "expected.pt", weights_only=True)
    train = load(DATA / "v1" / "train_v1.pt", raw=True)
    assert train.kind == "train" and train.step == 2 and train.net.uses_table
    with torch.no_grad():
        eps = canvas_eps(train.net, exp["x"], torch.tensor([500]), train.net.code_source.weight[:1], 8)
    assert eps.abs().mean() > 1e-4 and torch.allclose(eps, exp["eps_train_raw"], atol=1e-7)
    full = load(DATA / "v1" / "full_v1.pt")
    assert full.kind == "full" and full.latent is not None
    assert torch.allclose(ddim_sample_latent(full.latent, exp["z"], steps=5), exp["code"], atol=1e-5)
    sample = load_script("test")
    assert run_cli(sample.main, ["-f", str(DATA / "v1" / "full_v1.pt"), "-g", str(tmp_path / "g"), "--img_num",
                                 "1", "--device", "cpu", "--steps", "2", "--latent_steps", "2"]) == 0
    assert (tmp_path / "g" / "0.png").exists()
    capsys.readouterr()
    # their full files kept only the EMA U-Net: --raw cannot be honoured, and says so in one line
    assert run_cli(sample.main, ["-f", str(DATA / "v1" / "full_v1.pt"), "-g", str(tmp_path / "r"), "--raw",
                                 "--device", "cpu"]) == 2
    assert "holds only the ema Patch-DM weights" in capsys.readouterr().err
