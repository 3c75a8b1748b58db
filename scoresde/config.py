"""Run configurations for the ``scoresde`` command: a plain nested dict (the shape of a TOML
file) -> data, SDE, score network and :class:`~scoresde.train.Trainer`. The dict is what
checkpoints store, so a checkpoint alone rebuilds its model (:func:`load_run`).

Sections and defaults are :data:`DEFAULT_CONFIG` (the ``train`` section is
:class:`~scoresde.train.TrainConfig`'s fields); a TOML file or command-line flags override
single keys, and an unknown key or a bad value is a ``ValueError`` naming it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import torch

from scoresde.checkpoint import checkpoint_mismatch, load_checkpoint
from scoresde.data import ImageData, load_images
from scoresde.distributed import init_distributed, resolve_device
from scoresde.nn import UNet
from scoresde.score import EpsilonScore, ScoreModel
from scoresde.sde import VESDE, VPSDE, CosinePath, LinearPath, LinearSDE, SubVPSDE
from scoresde.train import TrainConfig, Trainer
from scoresde.velocity import FlowVelocity

__all__ = [
    "DEFAULT_CONFIG", "Run", "build_model", "build_sde", "build_trainer", "load_config", "load_data", "load_run",
    "merge_config",
]  # fmt: skip

DEFAULT_CONFIG: dict[str, Any] = {
    "data": {"name": "digits", "root": "", "download": False},
    "sde": {
        "name": "vp", "schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "sigma_min": 0.01, "sigma_max": 50.0,
    },
    "model": {
        "channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attention_levels": [1], "num_heads": 1,
        "dropout": 0.1, "embedding": "fourier", "conditional": False,
    },
    "train": TrainConfig().as_dict(),
    "run": {"out": "runs/train", "device": "auto"},
}  # fmt: skip
"""Every key a run configuration may set, with its default."""


def _check_value(name: str, value: Any, default: Any) -> Any:
    """``value`` if it has the type of ``default`` (ints pass for floats), else ``ValueError``."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = list(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"config key {name} must be {type(default).__name__}, got {value!r}")
    return value


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with the ``{section: {key: value}}`` entries of ``override`` set;
    keys must exist in :data:`DEFAULT_CONFIG` and values have its types."""
    merged = copy.deepcopy(base)
    for section, entries in override.items():
        if section not in DEFAULT_CONFIG:
            raise ValueError(f"unknown config section {section!r} (known: {', '.join(DEFAULT_CONFIG)})")
        if not isinstance(entries, dict):
            raise ValueError(f"config section {section!r} must be a table of keys, got {entries!r}")
        for key, value in entries.items():
            if key not in DEFAULT_CONFIG[section]:
                raise ValueError(
                    f"unknown config key {section}.{key} (known: {', '.join(DEFAULT_CONFIG[section])})"
                )
            merged.setdefault(section, {})[key] = _check_value(f"{section}.{key}", value, DEFAULT_CONFIG[section][key])
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_CONFIG`, then the TOML file at ``path``, then ``overrides``; the ``train``
    section is checked as a :class:`~scoresde.train.TrainConfig` (before any work is done)."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        import tomllib

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            config = merge_config(config, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from None
    config = merge_config(config, overrides or {})
    try:
        TrainConfig(**config["train"])
    except ValueError as err:  # its messages start with the key's name
        raise ValueError(f"config key train.{err}") from None
    return config


def build_sde(section: dict[str, Any]) -> LinearSDE:
    """``vp`` or ``subvp`` (each with the linear or cosine beta schedule), ``ve``, or the flow-matching
    paths ``linear_path`` (rectified flow) and ``cosine_path`` from the ``sde`` section."""
    name = section["name"]
    paths = {"linear_path": LinearPath, "cosine_path": CosinePath}
    if name in paths:
        return paths[name]()
    if name in ("vp", "subvp"):
        cls = VPSDE if name == "vp" else SubVPSDE
        if section["schedule"] == "cosine":  # no beta_min/beta_max: the cosine schedule fixes them
            return cls(schedule="cosine")
        return cls(section["beta_min"], section["beta_max"], schedule=section["schedule"])
    if name == "ve":
        return VESDE(section["sigma_min"], section["sigma_max"])
    raise ValueError(
        f"config key sde.name must be 'vp', 'subvp', 've', 'linear_path' or 'cosine_path', got {name!r}"
    )


def build_model(
    section: dict[str, Any], image_shape: tuple[int, ...], sde: LinearSDE, objective: str = "dsm",
    num_classes: int | None = None,
) -> ScoreModel:  # fmt: skip
    """``EpsilonScore(UNet(...), sde)`` from the ``model`` section for images of ``image_shape`` (C, H, W),
    or ``FlowVelocity(UNet(...), sde)`` for ``objective="flow_matching"`` (the U-Net predicts dx/dt).
    With ``model.conditional`` the U-Net takes labels of ``num_classes`` classes (and a null label)."""
    if section["conditional"] and not num_classes:
        raise ValueError("config key model.conditional needs labelled data (the data set has no classes)")
    net = UNet(
        in_channels=image_shape[0], channels=section["channels"], channel_mults=section["channel_mults"],
        num_res_blocks=section["num_res_blocks"], attention_levels=section["attention_levels"],
        num_heads=section["num_heads"], dropout=section["dropout"], embedding=section["embedding"],
        num_classes=num_classes if section["conditional"] else None,
    )  # fmt: skip
    factor = 2 ** (len(section["channel_mults"]) - 1)
    if image_shape[1] % factor or image_shape[2] % factor:
        raise ValueError(
            f"images of {image_shape[1]}x{image_shape[2]} do not fit {len(section['channel_mults'])} U-Net levels "
            f"(the size must be divisible by {factor}); shorten model.channel_mults"
        )
    return FlowVelocity(net, sde) if objective == "flow_matching" else EpsilonScore(net, sde)


def load_data(section: dict[str, Any], split: str) -> ImageData:
    """The image set of the ``data`` section (``download`` only when set)."""
    return load_images(section["name"], section["root"] or None, split, download=section["download"])


def build_trainer(
    config: dict[str, Any], *, resume: bool | str | Path = False, resume_state: dict[str, Any] | None = None,
    progress: bool = False,
) -> Trainer:  # fmt: skip
    """The :class:`~scoresde.train.Trainer` of the run described by ``config``, its data loaded
    and its model built, under ``config["run"]["out"]``; joins a ``torchrun`` process group if
    there is one (``resume``, ``resume_state``: see :class:`~scoresde.train.Trainer`)."""
    device = resolve_device(config["run"]["device"])
    init_distributed(device)
    settings = TrainConfig(**config["train"])
    torch.manual_seed(settings.seed)  # the network's initialisation (identical on every rank)
    data, eval_data = load_data(config["data"], "train"), load_data(config["data"], "test")
    sde = build_sde(config["sde"])
    model = build_model(config["model"], data.image_shape, sde, settings.objective, data.num_classes)
    return Trainer(model, sde, data, out_dir=config["run"]["out"], settings=settings, device=device,
                   eval_data=eval_data, config=config, progress=progress, resume=resume,
                   resume_state=resume_state)  # fmt: skip


class Run(NamedTuple):
    """A trained model rebuilt from its checkpoint (:func:`load_run`)."""

    model: ScoreModel
    """In eval mode, on the device asked for."""
    sde: LinearSDE
    config: dict[str, Any]
    """The run's config, completed with :data:`DEFAULT_CONFIG`."""
    step: int
    """The training step of the checkpoint."""
    event_shape: tuple[int, ...]
    """The shape of one data item, e.g. ``(1, 8, 8)``."""
    num_levels: int | None
    """The grey levels of the training images (``None`` for tensor data)."""


def load_run(checkpoint: str | Path, device: str | torch.device = "cpu", *, ema: bool = True) -> Run:
    """Rebuild a trained score model from a checkpoint written by the ``scoresde train``
    command (the file is read once), the model with the EMA weights (or the raw ones with
    ``ema=False``)."""
    state = load_checkpoint(checkpoint, map_location=device)
    config = state.get("config")
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ValueError(f"checkpoint {checkpoint} has no run config (was it written by `scoresde train`?)")
    config = merge_config(DEFAULT_CONFIG, {k: v for k, v in config.items() if k in DEFAULT_CONFIG})
    sde = build_sde(config["sde"])
    m = config["model"]
    target = f"the model its config describes (channels {m['channels']}, channel_mults {m['channel_mults']})"
    try:
        event_shape = tuple(state["event_shape"])
        model = build_model(m, event_shape, sde, config["train"]["objective"], state.get("num_classes"))
        if ema:
            weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
        else:
            weights = state["model"]
        model.load_state_dict(weights)
        step, num_levels = int(state["step"]), state["num_levels"]
    except (KeyError, RuntimeError) as err:
        raise checkpoint_mismatch(checkpoint, err, target) from None
    return Run(model.to(device).eval(), sde, config, step, event_shape, num_levels)
