"""Solvers for sampling: predictors, correctors, fixed-step ODE solvers, and adapters onto
torchdiffeq and torchsde. Each class documents its order and its paper."""

from scoresde.solvers._common import (
    CountingScore,
    FirstNonFinite,
    NonFiniteError,
    StepContext,
    predict_x0,
    require_linear_sde,
    require_sde,
)
from scoresde.solvers.afs import AnalyticFirstStep, gaussian_score
from scoresde.solvers.correctors import AnnealedLangevin, Corrector, LangevinCorrector
from scoresde.solvers.deis import DEIS3, IPNDM
from scoresde.solvers.exponential import exponential_moments, exponential_weights
from scoresde.solvers.flow import FlowField, FlowSolution, solve_flow
from scoresde.solvers.methods import METHODS, Method
from scoresde.solvers.ode import (
    DDIM,
    DPMSolverPP2M,
    DPMSolverPP3M,
    Euler,
    ExponentialIntegrator,
    Heun,
    LogSNRStepper,
    ODEStepper,
)
from scoresde.solvers.odeint import odeint
from scoresde.solvers.predictors import AncestralSampling, EulerMaruyama, Predictor, ReverseDiffusion
from scoresde.solvers.sdeint import sdeint_reverse_sde
from scoresde.solvers.unipc import UNIPC_VARIANTS, UniPC, UniPC2, UniPC3

__all__ = [
    "CountingScore",
    "FirstNonFinite",
    "NonFiniteError",
    "StepContext",
    "predict_x0",
    "require_linear_sde",
    "require_sde",
    "Predictor",
    "EulerMaruyama",
    "ReverseDiffusion",
    "AncestralSampling",
    "Corrector",
    "LangevinCorrector",
    "AnnealedLangevin",
    "ODEStepper",
    "Euler",
    "Heun",
    "LogSNRStepper",
    "ExponentialIntegrator",
    "DDIM",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
    "UniPC",
    "UniPC2",
    "UniPC3",
    "UNIPC_VARIANTS",
    "IPNDM",
    "DEIS3",
    "AnalyticFirstStep",
    "gaussian_score",
    "exponential_moments",
    "exponential_weights",
    "METHODS",
    "Method",
    "odeint",
    "FlowField",
    "FlowSolution",
    "solve_flow",
    "sdeint_reverse_sde",
]
