"""Noisy classifiers as files, trained on a run's data, and classifier guidance of a run's model.

A classifier checkpoint (:func:`save_classifier`) is a weights-only file of plain values, written
atomically by :func:`scoresde.checkpoint.save_checkpoint`::

    {"kind": "noisy-classifier", "network": {"name": "ClassifierMLP", "dim": ..., "hidden": ...,
     "depth": ..., "embedding": ..., "embed_dim": ...}, "num_classes": K, "sde": {<a config's sde
     section>}, "time_range": [t_min, T], "event_shape": [...], "weights": {...}, "info": {...}}

so :func:`load_classifier` rebuilds the :class:`~scoresde.guidance.NoisyClassifier` from the file
alone (the SDE through :func:`scoresde.config.build_sde`). :func:`train_run_classifier` fits one on
the training images and labels of a ``scoresde train`` run, under that run's SDE
(``scoresde train-classifier``); :func:`guided_run_model` is the score that ``scoresde sample --class K
--guidance S [--classifier CKPT]`` samples: classifier guidance with a classifier file, else
classifier-free guidance of a conditional model, refusing a classifier whose classes, SDE or event
shape differ from the run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scoresde.checkpoint import CheckpointError, checkpoint_mismatch, load_checkpoint, save_checkpoint
from scoresde.config import Run, build_sde, load_data, load_run
from scoresde.guidance import ClassifierFreeGuidance, ClassifierGuidance, NoisyClassifier
from scoresde.nn import ClassifierMLP
from scoresde.train import fit_classifier

__all__ = [
    "CLASSIFIER_KIND", "ClassifierFile", "ClassifierTraining", "build_classifier", "guided_run_model",
    "load_classifier", "save_classifier", "train_run_classifier",
]  # fmt: skip

CLASSIFIER_KIND = "noisy-classifier"
"""The ``kind`` entry of a classifier checkpoint (a run's checkpoint has none)."""

NETWORK_DEFAULTS: dict[str, Any] = {"hidden": 128, "depth": 3, "embedding": "fourier", "embed_dim": 64}
"""The :class:`~scoresde.nn.ClassifierMLP` settings a network config may leave out."""


def build_classifier(network: dict[str, Any], num_classes: int, sde_config: dict[str, Any]) -> NoisyClassifier:
    """A fresh :class:`~scoresde.guidance.NoisyClassifier` from plain values: ``network`` the
    :class:`~scoresde.nn.ClassifierMLP` settings (``dim`` required; ``name`` must be ``"ClassifierMLP"``
    if given; others default to :data:`NETWORK_DEFAULTS`), ``sde_config`` a run config's ``sde`` section."""
    settings = {**NETWORK_DEFAULTS, **network}
    name = settings.pop("name", "ClassifierMLP")
    if name != "ClassifierMLP":
        raise ValueError(f"classifier network must be 'ClassifierMLP', got {name!r}")
    unknown = set(settings) - {"dim", *NETWORK_DEFAULTS}
    if unknown or "dim" not in settings:
        raise ValueError(f"classifier network config needs dim and takes {', '.join(NETWORK_DEFAULTS)}; "
                         f"got {sorted(network)}")  # fmt: skip
    return NoisyClassifier(ClassifierMLP(num_classes=num_classes, **settings), build_sde(sde_config), num_classes)


def save_classifier(
    classifier: NoisyClassifier, path: str | Path, *, network: dict[str, Any], sde_config: dict[str, Any],
    event_shape: tuple[int, ...], info: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write ``classifier`` atomically as a weights-only checkpoint (module docstring): ``network`` and
    ``sde_config`` as given to :func:`build_classifier` (the SDE must be the classifier's own), the
    ``event_shape`` of one input, ``info`` plain values (e.g. the training settings). Returns the path."""
    if not isinstance(classifier, NoisyClassifier):
        raise TypeError(f"classifier must be a NoisyClassifier, got {type(classifier).__name__}")
    if repr(build_sde(sde_config)) != repr(classifier.sde):
        raise ValueError(f"sde_config {sde_config} builds {build_sde(sde_config)!r}, not the classifier's "
                         f"{classifier.sde!r}")  # fmt: skip
    weights = {k: v.detach().cpu() for k, v in classifier.net.state_dict().items()}
    state = {
        "kind": CLASSIFIER_KIND, "network": {"name": "ClassifierMLP", **network},
        "num_classes": classifier.num_classes, "sde": dict(sde_config), "time_range": list(classifier.time_range),
        "event_shape": [int(n) for n in event_shape], "weights": weights, "info": dict(info or {}),
    }  # fmt: skip
    return save_checkpoint(state, path)


@dataclass(frozen=True)
class ClassifierFile:
    """A classifier rebuilt by :func:`load_classifier` and the plain values its file holds."""

    classifier: NoisyClassifier
    """In eval mode, on the device asked for."""
    event_shape: tuple[int, ...]
    sde_config: dict[str, Any]
    network: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ClassifierFile:
    """Rebuild the classifier saved by :func:`save_classifier` at ``path`` (``torch.load(weights_only=True)``).

    Raises:
        CheckpointError: not a classifier checkpoint (e.g. a run's), or its time range is not its SDE's.
        ValueError: its weights do not fit the network its config describes.
    """
    state = load_checkpoint(path, map_location=device)
    if state.get("kind") != CLASSIFIER_KIND:
        raise CheckpointError(f"{path} is not a classifier checkpoint (written by `scoresde train-classifier` "
                              "or scoresde.classifiers.save_classifier)")  # fmt: skip
    try:
        network, num_classes, sde_config = state["network"], state["num_classes"], state["sde"]
        classifier = build_classifier(network, num_classes, sde_config)
        classifier.net.load_state_dict(state["weights"])
        event_shape = tuple(state["event_shape"])
        stored = tuple(state["time_range"])
    except (KeyError, RuntimeError) as err:
        raise checkpoint_mismatch(path, err, "the classifier its config describes") from None
    if stored != classifier.time_range:
        raise CheckpointError(f"classifier {path} records the time range {stored}, but its SDE "
                              f"{classifier.sde!r} has {classifier.time_range}")  # fmt: skip
    return ClassifierFile(classifier.to(device).eval(), event_shape, dict(sde_config), dict(network),
                          dict(state.get("info", {})))  # fmt: skip


@dataclass(frozen=True)
class ClassifierTraining:
    """What :func:`train_run_classifier` wrote: the file and the loss of every step."""

    path: Path
    losses: list[float]
    num_classes: int


def train_run_classifier(
    checkpoint: str | Path, out: str | Path, *, steps: int = 2000, batch_size: int = 256, lr: float = 2e-3,
    hidden: int = 256, depth: int = 3, seed: int = 0, device: str | torch.device = "cpu", progress: bool = False,
) -> ClassifierTraining:  # fmt: skip
    r"""Fit a noisy classifier :math:`p_\phi(y \mid x_t, t)` (a :class:`~scoresde.nn.ClassifierMLP` of
    ``hidden`` width and ``depth`` blocks) on the training images and labels of the run whose
    ``checkpoint`` is given, under the run's SDE (:func:`~scoresde.train.fit_classifier`: ``steps`` Adam
    steps of ``batch_size`` on perturbed data, images at their bin centres in model space), and save it at
    ``out`` (:func:`save_classifier`). ``seed`` seeds the initialisation, batches, times and noise."""
    run = load_run(checkpoint, device)
    data = load_data(run.config["data"], "train")
    if data.labels is None or not data.num_classes:
        raise ValueError(f"the data of run {checkpoint} ({run.config['data']['name']}) has no labels to classify")
    x = data.to_model(data.levels, dequantize=False).to(device)
    network = {"dim": int(x[0].numel()), "hidden": hidden, "depth": depth}
    torch.manual_seed(seed)
    classifier = build_classifier(network, data.num_classes, run.config["sde"]).to(device)
    generator = torch.Generator(device).manual_seed(seed)
    result = fit_classifier(classifier, x, data.labels.to(device), steps=steps, batch_size=batch_size, lr=lr,
                            generator=generator, progress=progress)  # fmt: skip
    info = {"run": str(checkpoint), "run_step": run.step, "steps": steps, "batch_size": batch_size, "lr": lr,
            "seed": seed, "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:])}  # fmt: skip
    path = save_classifier(classifier, out, network=network, sde_config=run.config["sde"],
                           event_shape=run.event_shape, info=info)  # fmt: skip
    return ClassifierTraining(path, result.losses, data.num_classes)


def guided_run_model(run: Run, label: int, scale: float, classifier: str | Path | None = None,
                     device: str | torch.device = "cpu") -> nn.Module:  # fmt: skip
    """The score to sample class ``label`` of ``run`` at guidance ``scale``: with a ``classifier`` file,
    classifier guidance of the run's (unconditional) score, :class:`~scoresde.guidance.ClassifierGuidance`;
    without, classifier-free guidance of a conditional model. A ``ValueError`` names a classifier whose
    number of classes (against a conditional model's), SDE or input shape differs from the run's, a label
    outside the classes, and guidance of an unconditional model without a classifier."""
    model_classes = getattr(run.model, "num_classes", None)
    if classifier is None:
        if model_classes is None:
            raise ValueError(
                f"classifier-free guidance needs a class-conditional model, but {type(run.model).__name__} has no "
                "classes: train one with `scoresde train --conditional`, or guide this one with a noisy classifier "
                "(`scoresde train-classifier`, then --classifier CKPT)"
            )
        return ClassifierFreeGuidance(run.model, label, scale=scale)
    loaded = load_classifier(classifier, device)
    clf = loaded.classifier
    if model_classes is not None and clf.num_classes != model_classes:
        raise ValueError(f"classifier {classifier} has {clf.num_classes} classes, the model {model_classes}")
    if repr(clf.sde) != repr(run.sde):
        raise ValueError(f"classifier {classifier} was trained under {clf.sde!r}, the model under {run.sde!r}")
    if loaded.event_shape != tuple(run.event_shape):
        raise ValueError(f"classifier {classifier} takes inputs of shape {loaded.event_shape}, the model's are "
                         f"{tuple(run.event_shape)}")  # fmt: skip
    return ClassifierGuidance(run.model, clf, label, scale=scale)
