"""The fixed-step probability-flow ODE solvers reachable by name from ``sample_ode(method=...)``."""

from __future__ import annotations

from scoresde.solvers.ode import DDIM, DPMSolverPP2M, DPMSolverPP3M, Euler, Heun, ODEStepper
from scoresde.solvers.unipc import UniPC2, UniPC3

ODE_STEPPERS: dict[str, type[ODEStepper]] = {
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "dpmpp_2m": DPMSolverPP2M,
    "dpmpp_3m": DPMSolverPP3M,
    "unipc_2": UniPC2,
    "unipc_3": UniPC3,
}
