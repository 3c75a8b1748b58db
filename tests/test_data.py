import gzip
import pickle
import sys

import pytest
import torch

import scoresde as sd
from scoresde.data import (
    DIGITS_NUM_TEST,
    ImageData,
    checkerboard,
    load_digits,
    load_image_folder,
    load_images,
    moons,
    swiss_roll,
    toy_2d,
)


def test_digits_split_is_fixed_disjoint_and_complete():
    train, test, full = load_digits("train"), load_digits("test"), load_digits("all")
    assert (len(train), len(test), len(full)) == (1500, DIGITS_NUM_TEST, 1797)
    assert train.levels.shape[1:] == (1, 8, 8) and train.levels.dtype == torch.uint8
    assert train.num_levels == 17 and train.num_classes == 10
    assert int(full.levels.max()) == 16 and int(full.levels.min()) == 0
    # every image of "all" is in exactly one split (compare as multisets of rows)
    rows = lambda d: sorted(map(tuple, torch.cat([d.levels.flatten(1), d.labels[:, None]], 1).tolist()))  # noqa: E731
    assert rows(full) == sorted(rows(train) + rows(test))
    assert torch.equal(load_digits("test").levels, test.levels)


def test_to_model_dequantizes_into_the_bins_and_inverts():
    data = load_digits("test")
    g = torch.Generator().manual_seed(0)
    y = data.to_model(data.levels, generator=g)
    assert y.dtype == torch.float32 and y.shape == data.levels.shape
    assert y.min() >= -1 and y.max() < 1
    assert torch.equal(data.from_model(y), data.levels)
    assert torch.equal(y, data.to_model(data.levels, generator=torch.Generator().manual_seed(0)))
    centre = data.to_model(data.levels, dequantize=False)
    assert torch.allclose(centre, 2 * (data.levels.float() + 0.5) / 17 - 1)
    # the transform is the one bits_per_dim accounts for
    assert data.transform.scale == 2.0 and data.transform.shift == -1.0
    assert isinstance(data.transform, sd.DataTransform)


def test_image_data_validates():
    with pytest.raises(ValueError, match=r"levels must be a non-empty \(n, C, H, W\) tensor, got shape \(3, 8, 8\)"):
        ImageData(torch.zeros(3, 8, 8, dtype=torch.uint8), None, 17)
    with pytest.raises(TypeError, match=r"levels must be an integer tensor, got torch.float32"):
        ImageData(torch.zeros(3, 1, 8, 8), None, 17)
    with pytest.raises(ValueError, match=r"split must be one of"):
        load_digits("valid")


def _write_pngs(base, classes, size, mode="L"):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    expected = []
    for label, cls in enumerate(classes):
        (base / cls).mkdir(parents=True)
        for i in range(3):
            channels = 1 if mode == "L" else 3
            arr = torch.randint(0, 256, (size[1], size[0], channels), generator=g, dtype=torch.uint8)
            img = Image.frombytes(mode, size, arr.numpy().tobytes())
            img.save(base / cls / f"{i}.png")
            expected.append((arr.permute(2, 0, 1), label))
    return expected


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_folder_reads_pngs_and_labels(tmp_path, mode):
    expected = _write_pngs(tmp_path, ["cat", "dog"], (6, 4), mode)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.levels.shape == (6, 1 if mode == "L" else 3, 4, 6)
    assert data.num_levels == 256 and data.num_classes == 2
    for (arr, label), got, got_label in zip(expected, data.levels, data.labels, strict=True):
        assert torch.equal(got, arr) and got_label == label
    assert torch.equal(load_images("folder", tmp_path).levels, data.levels)


def test_image_folder_split_subfolders_and_errors(tmp_path):
    _write_pngs(tmp_path / "train", ["a", "b"], (4, 4))
    _write_pngs(tmp_path / "test", ["a", "b"], (4, 4))
    assert len(load_image_folder(tmp_path, "test")) == 6
    _write_pngs(tmp_path / "odd", ["a"], (4, 4))
    from PIL import Image

    Image.new("L", (5, 4)).save(tmp_path / "odd" / "a" / "z.png")
    with pytest.raises(ValueError, match=r"z.png has \(height, width, channels\) \(4, 5, 1\)"):
        load_image_folder(tmp_path / "odd")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"image folder .*missing not found"):
        load_image_folder(tmp_path / "missing")


def _idx_bytes(t: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, t.ndim]) + b"".join(n.to_bytes(4, "big") for n in t.shape)
    return header + t.numpy().tobytes()


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_format(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    sizes = {"train": 5, "t10k": 3}
    images = {p: torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8) for p, n in sizes.items()}
    labels = {p: torch.randint(0, 10, (len(x),), generator=g, dtype=torch.uint8) for p, x in images.items()}
    (raw / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images["train"]))
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels["train"]))
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images["t10k"])))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels["t10k"])))
    test = load_images(name, tmp_path, "test")
    assert torch.equal(test.levels, images["t10k"][:, None]) and torch.equal(test.labels, labels["t10k"].long())
    assert len(load_images(name, tmp_path, "all")) == 8
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3)
    with pytest.raises(ValueError, match=r"header says shape \[5, 5, 5\] but holds 0 bytes"):
        load_images(name, tmp_path, "train")


def test_cifar10_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    g = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (4, 3 * 32 * 32), generator=g, dtype=torch.uint8)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": pixels.numpy(), b"labels": [1, 2, 3, 4]}, f)
    data = load_images("cifar10", tmp_path, "test")
    assert data.levels.shape == (4, 3, 32, 32) and data.labels.tolist() == [1, 2, 3, 4]
    assert torch.equal(data.levels.flatten(1), pixels)
    with pytest.raises(FileNotFoundError, match=r"data_batch_1 not found \(pass download=True"):
        load_images("cifar10", tmp_path, "train")


def test_download_is_explicit_and_needs_torchvision(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pass download=True"):
        load_images("mnist", tmp_path)  # no download without the flag
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match=r"download=True needs torchvision"):
        load_images("mnist", tmp_path, download=True)
    with pytest.raises(ValueError, match="data set must be one of"):
        load_images("imagenet", tmp_path)
    with pytest.raises(ValueError, match="needs a root folder"):
        load_images("mnist")


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "checkerboard", "rings"])
def test_toys_are_seeded(name):
    a = toy_2d(name, 500, generator=torch.Generator().manual_seed(0))
    b = toy_2d(name, 500, generator=torch.Generator().manual_seed(0))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert 0.3 < a.std() < 3


def test_toy_shapes_and_errors():
    pts = checkerboard(2000, generator=torch.Generator().manual_seed(0))
    cells = ((pts + 2) // 1).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all() and pts.abs().max() <= 2
    assert moons(3).shape == swiss_roll(3).shape == (3, 2)
    with pytest.raises(ValueError, match="toy must be one of"):
        toy_2d("spiral", 10)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        moons(0)
    with pytest.raises(ValueError, match="squares must be an even int >= 2, got 3"):
        checkerboard(5, squares=3)
