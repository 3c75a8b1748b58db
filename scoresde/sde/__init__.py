"""Forward SDEs, their reverse-time SDEs and probability-flow ODEs."""

from scoresde.sde.base import SDE, LinearSDE, ScoreFn
from scoresde.sde.paths import CosinePath, GaussianPath, LinearPath
from scoresde.sde.reverse import ProbabilityFlowODE, ReverseSDE
from scoresde.sde.subvp import SubVPSDE
from scoresde.sde.ve import VESDE
from scoresde.sde.vp import VPSDE

__all__ = ["SDE", "LinearSDE", "ScoreFn", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "ProbabilityFlowODE",
           "GaussianPath", "LinearPath", "CosinePath"]
