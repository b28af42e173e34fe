import pytest
import torch

from configs import get_preset
from configs.patchdm import preset_names
from model.patchdm import build_encoder, build_latent, build_unet
from model.common import count_params
from tests.helpers import DATA, read_tsv

D = 512  # code width of the tiny preset (CLIP width, as every real preset)


def _meta_counts(preset):
    cfg = get_preset(preset)
    with torch.device("meta"):
        return (count_params(build_unet(cfg.model)), count_params(build_encoder(cfg.model)),
                count_params(build_latent(cfg.latent, cfg.model.code_dim)))


@pytest.mark.parametrize("preset,unet,encoder", [
    ("nature", 71_404_035, 19_320_512),       # FAITHFULNESS.md: Architecture
    ("ffhq256-p128", 102_098_307, 24_016_640),
    ("church256-p256", 134_270_979, 28_574_464),
])
def test_official_parameter_counts(preset, unet, encoder):
    assert _meta_counts(preset) == (unet, encoder, 54_109_696)


@pytest.mark.parametrize("tsv,source", [("official-state-dict-p64.tsv", "table"),
                                        ("official-state-dict-p64-semantic-encoder.tsv", "encoder")])
def test_state_dict_names_and_shapes_match_official(tsv, source):
    ref = read_tsv(DATA / tsv)
    cfg = get_preset("nature")
    with torch.device("meta"):
        mine = {k: tuple(v.shape) for k, v in build_unet(cfg.model).state_dict().items()}
        if source == "encoder":
            mine.update({"encoder." + k: tuple(v.shape) for k, v in build_encoder(cfg.model).state_dict().items()})
        else:
            mine.update({"latent_net." + k: tuple(v.shape)
                         for k, v in build_latent(cfg.latent, 512).state_dict().items()})
            mine["encoder.semantic_enc.weight"] = ref["encoder.semantic_enc.weight"]
    assert mine == ref


def test_zero_initialised_outputs(tiny_cfg):
    unet = build_unet(tiny_cfg.model)
    assert unet.out[2].weight.abs().sum() == 0
    assert all(b.out_layers[3].weight.abs().sum() == 0 for b in unet.modules() if hasattr(b, "out_layers"))
    assert all(m.proj_out.weight.abs().sum() == 0 for m in unet.modules() if hasattr(m, "proj_out"))


def test_attention_sits_at_level_two_for_every_patch_size():
    # Faithful quirk (FAITHFULNESS.md: Architecture): 16x16 maps for patch 64, 32x32 for 128, 64x64 for 256.
    for preset, side in [("nature", 16), ("nature-p128", 32), ("nature-p256", 64)]:
        cfg = get_preset(preset)
        with torch.device("meta"):
            unet = build_unet(cfg.model)
        sizes = []
        hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
                 for n, m in unet.named_modules() if hasattr(m, "qkv") and not n.startswith("middle")]
        x = torch.zeros(1, 3, cfg.model.patch_size, cfg.model.patch_size, device="meta")
        unet(x, torch.zeros(1, dtype=torch.long, device="meta"), torch.zeros(1, 2, device="meta"),
             torch.zeros(1, 512, device="meta"))
        for h in hooks:
            h.remove()
        assert sizes and set(sizes) == {side}, (preset, sizes)


def test_encoder_output_shape(tiny_encoder):
    code = tiny_encoder(torch.randn(2, 3, 16, 24))
    assert code.shape == (2, D)


def test_latent_mlp_shapes_and_tie(tiny_latent):
    out = tiny_latent(torch.randn(3, D), torch.tensor([0, 10, 999]))
    assert out.shape == (3, D)
    layer = tiny_latent.layers[0]
    assert layer.cond_layers[1] is layer.linear_emb


def test_presets_build(tmp_path):
    for name in preset_names():
        cfg = get_preset(name)
        assert cfg.data.image_size[0] % cfg.model.patch_size == 0
        assert cfg.data.image_size[1] % cfg.model.patch_size == 0
