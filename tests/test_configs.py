import json

import pytest

from configs import PatchDMConfig, from_dict, get_preset, override, preset_names, to_dict


def test_nature_preset_is_the_official_setting():
    c = get_preset("nature")
    assert c.model.patch_size == 64 and c.model.channel_mult == (1, 2, 4, 8) and c.model.model_channels == 64
    assert c.data.image_size == (512, 1024) and c.data.resize == (512, 1280)
    assert c.model.code_source == "table" and not c.training.cfg and c.sampling.cfg_scale == 0.0
    assert (c.training.lr, c.training.grad_clip, c.training.ema_decay, c.training.batch_size) == (1e-4, 1.0, 0.9999, 96)
    assert (c.latent.beta, c.latent.hidden, c.latent.num_layers, c.latent.znormalize) == (0.008, 2048, 10, False)


def test_256_presets_use_encoder_and_cfg():
    for name in ("ffhq256", "church256", "bedroom256"):
        c = get_preset(name)
        assert c.model.code_source == "encoder" and c.training.cfg and c.sampling.cfg_scale == 0.5
    assert get_preset("lhq1024").training.code_grad_scale == 0.5


def test_patch_variants_switch_architecture():
    c = get_preset("ffhq1024-p256")
    assert (c.model.patch_size, c.model.model_channels, c.model.channel_mult) == (256, 128, (1, 1, 2, 2, 4, 4))
    assert c.model.encoder_mult == (1, 1, 2, 2, 4, 4, 4)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nature-p96")
    assert "tiny" in preset_names() and "bedroom256-p128" in preset_names()


def test_json_round_trip():
    c = get_preset("church256-p128")
    again = from_dict(json.loads(json.dumps(to_dict(c))))
    assert again == c and isinstance(again.model.channel_mult, tuple)
    with pytest.raises(ValueError, match="unknown config field"):
        from_dict({"model": {"width": 3}})


def test_override():
    c = override(get_preset("tiny"), ["training.batch_size=7", "model.channel_mult=[1,2]", "name=x"])
    assert c.training.batch_size == 7 and c.model.channel_mult == (1, 2) and c.name == "x"
    assert get_preset("tiny").training.batch_size == 4  # presets are fresh copies
    with pytest.raises(ValueError, match="no config field"):
        override(PatchDMConfig(), ["training.bogus=1"])
    with pytest.raises(ValueError, match="section.field=value"):
        override(PatchDMConfig(), ["training.lr"])


def test_a_config_names_its_family():
    c = get_preset("small")
    d = to_dict(c)
    assert c.family == "patchdm" and d["family"] == "patchdm"
    d.pop("family")  # every file written before families existed
    assert from_dict(d) == c
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        from_dict({**to_dict(c), "family": "nope"})
    with pytest.raises(ValueError, match="family is chosen by the preset"):
        override(c, ["family=pyramid"])
    with pytest.raises(ValueError, match="training.lr=0.0: must be above 0"):
        override(c, ["training.lr=0"]).validate()
