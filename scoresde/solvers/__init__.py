"""Solvers for sampling: predictors, correctors, fixed-step ODE solvers, and adapters onto
torchdiffeq and torchsde. Each class documents its order and its paper."""

from scoresde.solvers._common import CountingScore, NonFiniteError, StepContext
from scoresde.solvers.correctors import CORRECTORS, AnnealedLangevin, Corrector, LangevinCorrector
from scoresde.solvers.ode import (
    DDIM,
    ODE_STEPPERS,
    DPMSolverPP2M,
    DPMSolverPP3M,
    Euler,
    ExponentialIntegrator,
    Heun,
    ODEStepper,
)
from scoresde.solvers.odeint import (
    ADAPTIVE_ODEINT_METHODS,
    FIXED_GRID_ODEINT_METHODS,
    ODEINT_METHODS,
    FlowField,
    odeint,
)
from scoresde.solvers.predictors import PREDICTORS, AncestralSampling, EulerMaruyama, Predictor, ReverseDiffusion
from scoresde.solvers.sdeint import SDEINT_METHODS, sdeint_reverse_sde

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
    "ExponentialIntegrator",
    "DDIM",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
    "ODE_STEPPERS",
    "odeint",
    "FlowField",
    "ODEINT_METHODS",
    "ADAPTIVE_ODEINT_METHODS",
    "FIXED_GRID_ODEINT_METHODS",
    "sdeint_reverse_sde",
    "SDEINT_METHODS",
]
