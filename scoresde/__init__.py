"""scoresde: continuous-time score-based generative modelling in PyTorch.

Forward SDEs with closed-form marginals, an exact Gaussian-mixture oracle, score-model
adapters, denoising score matching, samplers and likelihoods.
"""

from scoresde import analytic, data, dequantization, guidance, nn
from scoresde.analytic import GaussianMixture
from scoresde.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scoresde.data import ImageData, load_digits, load_images
from scoresde.ddpm import DiscreteSchedule, ncsn_sigmas, sample_annealed_langevin, sample_ddim, sample_ddpm
from scoresde.dequantization import TruncatedNormalDequantization, UniformDequantization
from scoresde.discrete_data import (
    BitsPerDimResult,
    BpdEvaluation,
    DataTransform,
    bits_per_dim,
    dequantize,
    evaluate_bpd,
    to_levels,
)
from scoresde.elbo import ElboResult, continuous_elbo, ddpm_elbo
from scoresde.flow_matching import flow_matching_loss, ot_coupling
from scoresde.grid_tuning import GridSearch, search_time_grid, tune_time_grid
from scoresde.guidance import ClassifierFreeGuidance, ClassifierGuidance, NoisyClassifier, RePaint, Replacement, inpaint
from scoresde.likelihood import (
    DecodeResult,
    EncodeResult,
    LikelihoodGrid,
    LikelihoodResult,
    decode,
    divergence,
    encode,
    likelihood_grid,
    log_likelihood,
)
from scoresde.losses import dsm_loss
from scoresde.metrics import (
    digits_frechet_distance,
    energy_distance,
    frechet_distance,
    mmd,
    pathwise_rmse,
    sliced_wasserstein,
)
from scoresde.sample import SampleResult, Trajectory, sample_ode, sample_pc, sample_sde
from scoresde.score import DataScore, DirectScore, EpsilonScore, ScoreModel, VelocityScore
from scoresde.sde import SDE, VESDE, VPSDE, LinearSDE, ProbabilityFlowODE, ReverseSDE, SubVPSDE
from scoresde.sde.paths import CosinePath, GaussianPath, LinearPath
from scoresde.solvers import NonFiniteError
from scoresde.timesteps import check_time_grid, time_grid
from scoresde.train import FitResult, TrainConfig, Trainer, TrainResult, fit, fit_classifier
from scoresde.velocity import FlowVelocity

__version__ = "0.1.0"


def __getattr__(name: str):
    """``sd.plot`` on first use: matplotlib is imported only by code that plots."""
    if name == "plot":
        import importlib

        return importlib.import_module("scoresde.plot")
    raise AttributeError(f"module 'scoresde' has no attribute {name!r}")


__all__ = [
    "DiscreteSchedule",
    "sample_ddpm",
    "sample_ddim",
    "ncsn_sigmas",
    "sample_annealed_langevin",
    "ddpm_elbo",
    "continuous_elbo",
    "ElboResult",
    "SDE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "GaussianMixture",
    "analytic",
    "nn",
    "ScoreModel",
    "DirectScore",
    "EpsilonScore",
    "DataScore",
    "VelocityScore",
    "GaussianPath",
    "LinearPath",
    "CosinePath",
    "FlowVelocity",
    "flow_matching_loss",
    "ot_coupling",
    "dsm_loss",
    "fit",
    "fit_classifier",
    "FitResult",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "data",
    "ImageData",
    "load_digits",
    "load_images",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "log_likelihood",
    "likelihood_grid",
    "LikelihoodResult",
    "LikelihoodGrid",
    "divergence",
    "bits_per_dim",
    "dequantize",
    "to_levels",
    "dequantization",
    "TruncatedNormalDequantization",
    "UniformDequantization",
    "BitsPerDimResult",
    "DataTransform",
    "evaluate_bpd",
    "BpdEvaluation",
    "encode",
    "EncodeResult",
    "decode",
    "DecodeResult",
    "sample_pc",
    "sample_sde",
    "sample_ode",
    "SampleResult",
    "Trajectory",
    "NonFiniteError",
    "time_grid",
    "check_time_grid",
    "tune_time_grid",
    "search_time_grid",
    "GridSearch",
    "sliced_wasserstein",
    "pathwise_rmse",
    "energy_distance",
    "mmd",
    "frechet_distance",
    "digits_frechet_distance",
    "guidance",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "NoisyClassifier",
    "Replacement",
    "RePaint",
    "inpaint",
]
