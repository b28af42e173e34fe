"""The data geometry (dataset.geometric_transform) in PIL equals torchvision's Resize / CenterCrop on PIL images pixel
for pixel, and the scripts' --help no longer imports torchvision."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dataset
from tests.helpers import ROOT, photo

SIZES = [(40, 64), (64, 40), (33, 97), (97, 33), (16, 24), (50, 50), (7, 130)]


def torchvision_transform(kind, image_size, resize):
    """The geometry as the project computed it with torchvision before."""
    from torchvision import transforms
    from torchvision.transforms import functional as TF
    h, w = image_size

    def cover(img):
        s = max(h / img.height, w / img.width)
        return TF.resize(img, [max(h, round(img.height * s)), max(w, round(img.width * s))])

    if kind == "nature":
        steps = [transforms.Resize(tuple(resize)), transforms.CenterCrop((h, w))]
    else:
        steps = [transforms.Resize(min(h, w)) if h == w else cover, transforms.CenterCrop((h, w))]
    return transforms.Compose(steps)


@pytest.mark.parametrize("kind,image_size,resize", [("nature", (16, 32), (16, 40)), ("resize", (24, 24), (24, 24)),
                                                    ("resize_crop", (16, 24), (16, 24)),
                                                    ("resize_crop", (24, 16), (24, 16))])
def test_geometry_equals_torchvision(kind, image_size, resize):
    ours = dataset.geometric_transform(kind, image_size, resize)
    theirs = torchvision_transform(kind, image_size, resize)
    for i, (h, w) in enumerate(SIZES):
        img = Image.fromarray(photo(h, w, i))
        a, b = np.asarray(ours(img)), np.asarray(theirs(img))
        assert a.shape == b.shape == (*image_size, 3) and np.array_equal(a, b), (h, w)


@pytest.mark.parametrize("hw", [(10, 10), (9, 12), (12, 9), (5, 20), (20, 5)])
def test_center_crop_pads_like_torchvision_when_the_crop_is_larger(hw):
    from torchvision import transforms
    img = Image.fromarray(photo(7, 8, 3))
    assert np.array_equal(np.asarray(dataset.center_crop(img, hw)), np.asarray(transforms.CenterCrop(hw)(img)))


def test_help_does_not_import_torchvision():
    code = ("import sys; sys.argv = ['x', '--help']; import runpy\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-500:]
