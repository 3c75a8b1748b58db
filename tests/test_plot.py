"""scoresde.plot: lazy import, the image grid's layout and values, the PNG it writes."""

import subprocess
import sys

import pytest
import torch

import scoresde as sd


def test_package_import_leaves_matplotlib_alone_until_sd_plot():
    code = (
        "import sys, scoresde as sd; assert 'matplotlib' not in sys.modules; "
        "assert callable(sd.plot.image_grid); assert 'matplotlib' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'plott'"):
        sd.plott  # noqa: B018


def test_image_grid_layout_and_values():
    levels = torch.arange(5 * 2 * 3).reshape(5, 1, 2, 3) % 17
    grid = sd.plot.image_grid(levels, num_levels=17, nrow=3, padding=1)
    assert grid.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1)  # 2 rows of 3, one pixel of padding
    # image 4 sits in row 1, column 1; its pixels are level / (K - 1)
    assert torch.equal(grid[4:6, 5:8, 0], levels[4, 0] / 16)
    assert (grid[0] == 1).all() and (grid[4:6, 9:12] == 1).all()  # padding and the empty last cell are white
    with pytest.raises(ValueError, match="images must be"):
        sd.plot.image_grid(levels[:, 0], num_levels=17)


def test_save_image_grid_writes_the_enlarged_png(tmp_path):
    from matplotlib.image import imread

    levels = torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    path = sd.plot.save_image_grid(levels, tmp_path / "sub" / "grid.png", num_levels=17, scale=2)
    image = imread(path)
    assert image.shape[:2] == (2 * (2 * 9 + 1), 2 * (2 * 9 + 1))
    expected = sd.plot.image_grid(levels, num_levels=17)[..., 0].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.allclose(torch.as_tensor(image[..., 0]).float(), expected, atol=1 / 255)  # 8-bit rounding
