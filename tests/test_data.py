import gzip
import io
import os
import pickle
import re
import shlex
import struct
import sys
from typing import ClassVar

import pytest
import torch

import scoresde as sd
from scoresde.checkpoint import load_checkpoint, save_checkpoint
from scoresde.config import load_data
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


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's ``str`` (BINSTRING), and numpy's globals with the
    ``numpy.core`` spelling: a batch as the original CIFAR-10 python files are written."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        size = bytes([len(data)]) if len(data) < 256 else struct.pack("<i", len(data))
        self.write((pickle.SHORT_BINSTRING if len(data) < 256 else pickle.BINSTRING) + size + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = _save_py2_str


def _py2_pickle(obj):
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar_folder(root, batches, write=pickle.dumps):
    """``root/cifar-10-batches-py`` with ``batches``: name -> (pixels (n, 3072) uint8, labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in batches.items():
        batch = {"batch_label": f"{name} of 6", "labels": labels, "data": pixels, "filenames": ["a.png"] * len(labels)}
        if write is pickle.dumps:
            batch = {key.encode(): value for key, value in batch.items()}
        (folder / name).write_bytes(write(batch))
    return folder


@pytest.mark.parametrize("style", ["python2 file", "numpy array", "plain lists"])
def test_cifar10_format(tmp_path, style):
    g = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (6, 3 * 32 * 32), generator=g, dtype=torch.uint8)
    labels = [1, 2, 3, 4, 9, 0]
    as_stored = pixels.tolist() if style == "plain lists" else pixels.numpy()
    write = _py2_pickle if style == "python2 file" else pickle.dumps
    names = [f"data_batch_{i}" for i in range(1, 6)]
    _cifar_folder(tmp_path, {"test_batch": (as_stored[:4], labels[:4])}, write)
    data = load_images("cifar10", tmp_path, "test")
    assert data.levels.shape == (4, 3, 32, 32) and data.levels.dtype == torch.uint8
    assert torch.equal(data.levels.flatten(1), pixels[:4]) and data.labels.tolist() == [1, 2, 3, 4]
    assert data.labels.dtype == torch.int64 and (data.num_levels, data.num_classes) == (256, 10)
    with pytest.raises(FileNotFoundError, match=r"data_batch_1 not found \(pass download=True"):
        load_images("cifar10", tmp_path, "train")
    _cifar_folder(tmp_path, {name: (as_stored[4:], labels[4:]) for name in names}, write)
    full = load_images("cifar10", tmp_path, "all")
    assert torch.equal(full.levels.flatten(1), torch.cat([pixels[4:]] * 5 + [pixels[:4]]))
    assert full.labels.tolist() == [9, 0] * 5 + [1, 2, 3, 4]


class _RunsCode:
    """A crafted pickle: loading it calls ``call`` (``os.system`` or ``exec``), which writes ``marker``."""

    def __init__(self, call, marker):
        self.call, self.marker = call, marker

    def __reduce__(self):
        if self.call == "os.system":
            return (os.system, (f"touch {shlex.quote(str(self.marker))}",))
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("call", ["os.system", "exec"])
@pytest.mark.parametrize("where", ["the file", "the data"])
def test_a_crafted_cifar10_file_is_refused_and_never_run(tmp_path, call, where):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_RunsCode(call, marker))
    pickle.loads(payload)  # the payload is live: a plain pickle.load runs it
    assert marker.exists()
    marker.unlink()
    crafted = _RunsCode(call, marker)
    content = crafted if where == "the file" else {b"data": crafted, b"labels": [1]}
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps(content))
    refused = rf"{'(posix|nt|os)' if call == 'os.system' else 'builtins'}\.{call.split('.')[-1]}"
    message = rf"cannot read {folder / 'test_batch'} as a CIFAR-10 batch: refused global {refused} \("
    with pytest.raises(ValueError, match=message):
        load_images("cifar10", tmp_path, "test")
    with pytest.raises(ValueError, match=message):
        load_data({"name": "cifar10", "root": str(tmp_path), "download": False}, "test")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (3, r"test_batch is not a CIFAR-10 batch: expected a dict with b'data' and b'labels', got int"),
        ({b"data": [[0] * 3072]}, r"expected a dict with b'data' and b'labels', got a dict with keys \[b'data'\]"),
        ({b"data": [[0] * 3071], b"labels": [1]}, r"holds \(n, 3072\) pixels and n labels, got data of shape \(1, 30"),
        ({b"data": [[0] * 3072] * 2, b"labels": [1]}, r"and labels of shape \(1,\)"),
        ({b"data": [[0.5] * 3072], b"labels": [1]}, r"CIFAR-10 b'data' must hold integers, got torch.float32"),
        ({b"data": [[256] * 3072], b"labels": [1]}, r"b'data' must lie in \[0, 255\], got values in \[256, 256\]"),
        ({b"data": [[0] * 3072], b"labels": [10]}, r"b'labels' must lie in \[0, 9\], got values in \[10, 10\]"),
        ({b"data": "pixels", b"labels": [1]}, r"CIFAR-10 data and labels must be arrays or lists of ints"),
    ],
    ids=["int", "no-labels", "3071-pixels", "2-images-1-label", "float", "256", "label-10", "str"],
)  # fmt: skip
def test_a_cifar10_file_of_the_wrong_content_is_named(tmp_path, content, message):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=message):
        load_images("cifar10", tmp_path, "test")
    (folder / "test_batch").write_bytes(pickle.dumps(content)[:-5])
    with pytest.raises(ValueError, match=rf"cannot read {folder / 'test_batch'} as a CIFAR-10 batch"):
        load_images("cifar10", tmp_path, "test")


CLI_RUN = """
[model]
channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
dropout = 0.0

[train]
steps = 1
batch_size = 16
warmup_steps = 0
num_eval_images = 0
num_grid_samples = 0

[run]
device = "cpu"
"""


def test_a_crafted_cifar10_file_is_refused_by_every_command(tmp_path, capsys):
    from scoresde.cli import main

    marker = tmp_path / "ran"
    folder = tmp_path / "crafted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps(_RunsCode("os.system", marker)))

    def refused(command, split):
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert re.fullmatch(
            rf"scoresde {command}: error: cannot read {re.escape(str(folder / split))} as a CIFAR-10 batch: "
            r"refused global (posix|nt|os)\.system \(.*nothing in the file was run\)", err[0]
        ), err[0]  # fmt: skip
        assert not marker.exists()

    args = ["--data", "cifar10", "--data-root", str(tmp_path / "crafted"), "--out", str(tmp_path / "new")]
    assert main(["train", *args, "--no-progress"]) == 2
    refused("train", "data_batch_1")

    # a checkpoint whose stored config names the crafted folder (the weights themselves are safe)
    (tmp_path / "run.toml").write_text(CLI_RUN)
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    state = load_checkpoint(run / "checkpoint.pt")
    state["config"]["data"] = {"name": "cifar10", "root": str(tmp_path / "crafted"), "download": False}
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, run / "checkpoint.pt")
    assert main(["train", "--out", str(run), "--resume", "--steps", "2", "--no-progress"]) == 2
    refused("train", "data_batch_1")
    assert main(["likelihood", "--checkpoint", str(run / "checkpoint.pt"), "--num-images", "1"]) == 2
    refused("likelihood", "test_batch")


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
