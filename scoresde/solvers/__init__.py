"""Solvers for sampling: predictors, correctors, fixed-step ODE solvers, and adapters onto
torchdiffeq and torchsde. Each class documents its order and its paper."""

from scoresde.solvers._common import CountingScore, NonFiniteError, StepContext
from scoresde.solvers.correctors import CORRECTORS, AnnealedLangevin, Corrector, LangevinCorrector
from scoresde.solvers.exponential import exponential_moments, exponential_weights
from scoresde.solvers.flow import FlowField, FlowSolution, solve_flow
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
from scoresde.solvers.odeint import ADAPTIVE_ODEINT_METHODS, FIXED_GRID_ODEINT_METHODS, ODEINT_METHODS, odeint
from scoresde.solvers.predictors import PREDICTORS, AncestralSampling, EulerMaruyama, Predictor, ReverseDiffusion
from scoresde.solvers.registry import ODE_STEPPERS
from scoresde.solvers.sdeint import SDEINT_METHODS, sdeint_reverse_sde
from scoresde.solvers.unipc import UNIPC_VARIANTS, UniPC, UniPC2, UniPC3

__all__ = [
    "CountingScore",
    "NonFiniteError",
    "StepContext",
    "Predictor",
    "EulerMaruyama",
    "ReverseDiffusion",
    "AncestralSampling",
    "PREDICTORS",
    "Corrector",
    "LangevinCorrector",
    "AnnealedLangevin",
    "CORRECTORS",
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
    "exponential_moments",
    "exponential_weights",
    "ODE_STEPPERS",
    "odeint",
    "FlowField",
    "FlowSolution",
    "solve_flow",
    "ODEINT_METHODS",
    "ADAPTIVE_ODEINT_METHODS",
    "FIXED_GRID_ODEINT_METHODS",
    "sdeint_reverse_sde",
    "SDEINT_METHODS",
]
