r"""Data sets: 2-D toys, the bundled sklearn digits, and opt-in image sets read from disk.

Images are kept as integer levels ``0..num_levels-1`` (``uint8``, ``(n, C, H, W)``) in an
:class:`ImageData`, together with the map to model space that
:func:`scoresde.bits_per_dim` accounts for. The convention everywhere (training, sampling,
bits/dim) is uniform dequantization followed by the affine transform

.. math:: u = (x + \nu)/K,\quad \nu \sim U[0, 1)^D, \qquad y = 2u - 1 \in [-1, 1]^D,

with ``K = num_levels`` (:class:`~scoresde.DataTransform` with its defaults). Training draws a
fresh :math:`\nu` for every batch, so the model is fit to exactly the continuous density whose
bound :func:`~scoresde.bits_per_dim` evaluates.

Opt-in sets (MNIST, Fashion-MNIST, CIFAR-10, an image folder) are read from their on-disk
formats with no torchvision import; torchvision (the ``images`` extra) is imported only to
download, and only when ``download=True`` is passed (never implicitly).
"""

from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from scoresde.analytic import GaussianMixture
from scoresde.discrete_data import DataTransform, to_levels
from scoresde.discrete_data import dequantize as dequantize_levels

__all__ = [
    "DIGITS_NUM_TEST",
    "DIGITS_SPLIT_SEED",
    "IMAGE_SETS",
    "TOYS",
    "ImageData",
    "checkerboard",
    "load_digits",
    "load_image_folder",
    "load_images",
    "moons",
    "ring_mixture",
    "swiss_roll",
    "to_levels",
    "toy_2d",
]

DIGITS_NUM_TEST = 297
DIGITS_SPLIT_SEED = 0
"""The digits split rule: ``perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))``;
the images at ``perm[:1500]`` are the train split, at ``perm[1500:]`` (297) the test split.
(A random rather than a contiguous split: sklearn's order groups writers, and its last 297
images are markedly harder than the rest — a 10-component Gaussian mixture scores 2.89
bits/dim on them against 2.60 on a random 297.)"""

SPLITS = ("train", "test", "all")


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True, eq=False)
class ImageData:
    """Images as integer levels with the map to model space.

    Attributes:
        levels: ``(n, C, H, W)`` ``uint8`` (or int64 for more than 256 levels) in ``[0, num_levels - 1]``.
        labels: ``(n,)`` int64 class labels, or ``None``.
        num_levels: ``K``, the number of grey levels (17 for digits, 256 for 8-bit images).
        num_classes: number of classes (0 if unlabelled).
        transform: dequantized ``[0, 1]`` -> model space (default ``y = 2u - 1``).
    """

    levels: Tensor
    labels: Tensor | None
    num_levels: int
    num_classes: int = 0
    transform: DataTransform = field(default_factory=DataTransform)

    def __post_init__(self) -> None:
        if self.levels.ndim != 4 or self.levels.shape[0] == 0:
            raise ValueError(f"levels must be a non-empty (n, C, H, W) tensor, got shape {tuple(self.levels.shape)}")
        if self.levels.is_floating_point():
            raise TypeError(f"levels must be an integer tensor, got {self.levels.dtype}")
        if self.labels is not None and self.labels.shape != (self.levels.shape[0],):
            raise ValueError(f"labels must be (n,) = ({self.levels.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.levels.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.levels.shape[1:])  # type: ignore[return-value]

    def to_model(
        self, levels: Tensor, *, dequantize: bool = True, generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        r"""Levels ``(b, C, H, W)`` -> model space: :math:`y = T((x + \nu)/K)`, :math:`\nu` uniform
        on ``[0, 1)`` (drawn with ``generator`` on ``levels``' device), or ``0.5`` (the bin
        centre) with ``dequantize=False``."""
        return dequantize_levels(
            levels, self.num_levels, self.transform, generator=generator, dtype=dtype, centre=not dequantize
        )

    def from_model(self, y: Tensor) -> Tensor:
        """Model space -> integer levels (:func:`to_levels`)."""
        return to_levels(y, self.num_levels, self.transform)

    def subset(self, index: Tensor | slice) -> ImageData:
        """The images (and labels) at ``index``."""
        labels = None if self.labels is None else self.labels[index]
        return ImageData(self.levels[index], labels, self.num_levels, self.num_classes, self.transform)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_digits(split: str = "train") -> ImageData:
    """sklearn's handwritten digits (bundled with scikit-learn, no download): 1797 images of
    ``1 x 8 x 8`` with 17 grey levels ``0..16`` and labels ``0..9``. ``split`` is ``"train"``
    (1500 images), ``"test"`` (:data:`DIGITS_NUM_TEST` = 297; the rule is in
    :data:`DIGITS_SPLIT_SEED`) or ``"all"`` (sklearn's order)."""
    _check_split(split)
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn") from None
    bunch = sklearn_digits()
    levels = torch.as_tensor(bunch.data, dtype=torch.float64).round().to(torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    data = ImageData(levels, labels, num_levels=17, num_classes=10)
    if split == "all":
        return data
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_train = len(data) - DIGITS_NUM_TEST
    return data.subset(perm[:n_train] if split == "train" else perm[n_train:])


# --- on-disk formats of the opt-in sets (the layouts torchvision downloads to)


def _read_idx(path: Path) -> Tensor:
    """An IDX file (MNIST's format: magic ``0 0 dtype ndim``, big-endian int32 sizes, data),
    plain or gzipped, as a uint8 tensor."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != math.prod(shape):
        raise ValueError(f"{path}: header says shape {shape} but holds {len(body)} bytes")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder / stem} not found (pass download=True to fetch it)")


def _load_mnist_like(root: Path, folder: str, split: str) -> ImageData:
    raw = root / folder / "raw"
    parts = ("train", "t10k") if split == "all" else ("train" if split == "train" else "t10k",)
    images = [_read_idx(_find(raw, f"{p}-images-idx3-ubyte")) for p in parts]
    labels = [_read_idx(_find(raw, f"{p}-labels-idx1-ubyte")).long() for p in parts]
    return ImageData(torch.cat(images)[:, None], torch.cat(labels), num_levels=256, num_classes=10)


# what a CIFAR-10 python batch may name: numpy's array reconstruction (both spellings of its
# core module), nothing else; dicts, lists, bytes and ints need no global
_CIFAR_GLOBALS = frozenset(
    {(m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")}
    | {("numpy", "ndarray"), ("numpy", "dtype")}
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays: any other global (a
    class or function a crafted file would call) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} (a CIFAR-10 batch holds only dicts, lists, bytes, ints and "
                "numpy arrays; nothing in the file was run)"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """The ``(n, 3, 32, 32)`` uint8 images and ``(n,)`` labels of one CIFAR-10 python batch (a
    pickled dict with ``b"data"`` ``(n, 3072)`` and ``b"labels"``), read without running code."""
    try:
        with path.open("rb") as f:
            # encoding="bytes" reads the Python 2 strings of the original files as bytes
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a crafted or damaged pickle can fail in many ways; all mean the same here
        raise ValueError(f"cannot read {path} as a CIFAR-10 batch: {err}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        got = f"a dict with keys {sorted(batch, key=repr)!r}" if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels', got {got}")
    try:
        images, labels = torch.as_tensor(batch[b"data"]), torch.as_tensor(batch[b"labels"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: CIFAR-10 data and labels must be arrays or lists of ints ({err})") from None
    n = images.shape[0] if images.ndim else 0
    if images.shape != (n, 3 * 32 * 32) or labels.shape != (n,):
        raise ValueError(
            f"{path}: a CIFAR-10 batch holds (n, 3072) pixels and n labels, got data of shape "
            f"{tuple(images.shape)} and labels of shape {tuple(labels.shape)}"
        )
    for key, values, top in ((b"data", images, 255), (b"labels", labels, 9)):
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise ValueError(f"{path}: CIFAR-10 {key!r} must hold integers, got {values.dtype}")
        low, high = (int(values.min()), int(values.max())) if n else (0, 0)
        if low < 0 or high > top:
            raise ValueError(f"{path}: CIFAR-10 {key!r} must lie in [0, {top}], got values in [{low}, {high}]")
    return images.to(torch.uint8).reshape(-1, 3, 32, 32), labels.to(torch.int64)


def _load_cifar10(root: Path, split: str) -> ImageData:
    folder = root / "cifar-10-batches-py"
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    files = names["train"] + names["test"] if split == "all" else names[split]
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (pass download=True to fetch it)")
        batch_images, batch_labels = _read_cifar_batch(path)
        images.append(batch_images)
        labels.append(batch_labels)
    return ImageData(torch.cat(images), torch.cat(labels), num_levels=256, num_classes=10)


_DOWNLOADERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
IMAGE_SETS = ("digits", "mnist", "fashion_mnist", "cifar10", "folder")


def _download(name: str, root: Path, split: str) -> None:
    try:
        import torchvision.datasets as tvd
    except Exception as err:  # torchvision may be absent or built against another torch
        raise ImportError(
            f"download=True needs torchvision (pip install 'scoresde[images]'); importing it failed: {err}"
        ) from None
    cls = getattr(tvd, _DOWNLOADERS[name])
    for train in ((True, False) if split == "all" else (split == "train",)):
        cls(str(root), train=train, download=True)


def load_images(
    name: str, root: str | Path | None = None, split: str = "train", *, download: bool = False
) -> ImageData:
    """An image set by name: ``"digits"`` (bundled), ``"mnist"``, ``"fashion_mnist"``,
    ``"cifar10"`` (read from ``root`` in torchvision's layout: ``root/MNIST/raw``,
    ``root/FashionMNIST/raw``, ``root/cifar-10-batches-py``; fetched there first with
    ``download=True``) or ``"folder"`` (:func:`load_image_folder` on ``root``)."""
    _check_split(split)
    if name == "digits":
        return load_digits(split)
    if name not in IMAGE_SETS:
        raise ValueError(f"data set must be one of {IMAGE_SETS}, got {name!r}")
    if root is None:
        raise ValueError(f"data set {name!r} needs a root folder")
    root = Path(root)
    if name == "folder":
        return load_image_folder(root, split)
    if download:
        _download(name, root, split)
    if name == "cifar10":
        return _load_cifar10(root, split)
    return _load_mnist_like(root, _DOWNLOADERS[name], split)


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_image_folder(root: str | Path, split: str = "train", *, mode: str | None = None) -> ImageData:
    """Images under ``root/<class>/*.png`` (or ``root/<split>/<class>/...`` when a ``split``
    folder exists), labels from the sorted class-folder names, 8-bit levels. All images must
    share one size; ``mode`` is a PIL mode (``"L"``, ``"RGB"``) to convert to, default that
    of the first image."""
    from PIL import Image  # pillow comes with matplotlib

    _check_split(split)
    root = Path(root)
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} not found")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {base} has no class subfolders")
    images, labels, size = [], [], None
    for label, cls in enumerate(classes):
        for path in sorted((base / cls).iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            with Image.open(path) as img:
                mode = mode or img.mode
                arr = torch.frombuffer(bytearray(img.convert(mode).tobytes()), dtype=torch.uint8)
                shape = (img.height, img.width, len(img.convert(mode).getbands()))
            if size is not None and shape != size:
                raise ValueError(f"{path} has (height, width, channels) {shape}, the images before it {size}")
            size = shape
            images.append(arr.reshape(shape).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"image folder {base} holds no images ({', '.join(_IMAGE_SUFFIXES)})")
    return ImageData(torch.stack(images), torch.tensor(labels), num_levels=256, num_classes=len(classes))


# ----------------------------------------------------------------------------- 2-D toys


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """``num_modes`` isotropic Gaussians of std ``std`` evenly spaced on a circle of ``radius``
    (the classic 2-D test density; its exact score is known at every t)."""
    if not isinstance(num_modes, int) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive int, got {num_modes!r}")
    if radius < 0 or std <= 0:
        raise ValueError(f"need radius >= 0 and std > 0, got radius={radius!r}, std={std!r}")
    angle = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means, torch.full((num_modes, 2), std**2, dtype=torch.float64))


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")


def moons(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    r"""Two interleaved half circles, ``(n, 2)`` float32, centred and scaled to std ~1:
    :math:`(\cos\theta, \sin\theta)` and :math:`(1 - \cos\theta, \tfrac12 - \sin\theta)`,
    :math:`\theta \sim U[0, \pi]`, plus :math:`\mathcal N(0, \text{noise}^2)`."""
    _check_n(n)
    theta = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, theta.cos(), 1 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0
    return pts + noise * torch.randn(n, 2, generator=generator)


def swiss_roll(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    r"""A 2-D swiss roll, ``(n, 2)``: :math:`r(\cos 3r\pi, \sin 3r\pi)\cdot 2`,
    :math:`r = \sqrt{U[0.04, 1]}` (uniform density along the spiral area), plus Gaussian noise."""
    _check_n(n)
    r = (0.04 + 0.96 * torch.rand(n, generator=generator)).sqrt()
    angle = 3 * math.pi * r
    pts = 2 * r[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return pts + noise * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, *, squares: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the dark squares of a ``squares x squares`` board on ``[-2, 2]^2``, ``(n, 2)``."""
    _check_n(n)
    if not isinstance(squares, int) or squares < 2 or squares % 2:
        raise ValueError(f"squares must be an even int >= 2, got {squares!r}")
    half = squares // 2
    cell = torch.randint(0, squares * half, (n,), generator=generator)
    row = cell // half
    col = 2 * (cell % half) + row % 2  # dark squares: col + row even
    offset = torch.rand(n, 2, generator=generator)
    side = 4.0 / squares
    return torch.stack([col, row], dim=1).float() * side - 2.0 + offset * side


TOYS = ("moons", "swiss_roll", "checkerboard", "rings")


def toy_2d(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points ``(n, 2)`` float32 from the toy called ``name`` (one of :data:`TOYS`;
    ``"rings"`` is :func:`ring_mixture`)."""
    if name == "moons":
        return moons(n, generator=generator)
    if name == "swiss_roll":
        return swiss_roll(n, generator=generator)
    if name == "checkerboard":
        return checkerboard(n, generator=generator)
    if name == "rings":
        _check_n(n)
        return ring_mixture().sample(n, generator=generator).float()
    raise ValueError(f"toy must be one of {TOYS}, got {name!r}")
