r"""Every method name a user can pass, in one table (:data:`METHODS`): a name means one solver in
every function that accepts it.

The naming rule: scoresde's own solvers have plain names (``euler``, ``heun``, ``dpmpp_2m``,
``euler_maruyama``, ``langevin``, ...); a torchdiffeq or torchsde method keeps its library's name
(``dopri5``, ``rk4``, ``srk``, ...) unless that name is one of ours, and then carries its library's
prefix (``torchdiffeq_euler``, ``torchsde_euler``). ``tsit5`` is our tableau run by torchdiffeq's
adaptive solver (:mod:`scoresde.solvers.tsit5`), registered there under a name torchdiffeq does not
use, so torchdiffeq's own ``tsit5`` (on its main branch since 2025) can never stand in for it.

A function takes the methods that integrate what it integrates (:func:`lookup`): ``sample_ode``
every ``"ode"`` method; ``log_likelihood``, ``encode`` and ``decode`` the torchdiffeq ones;
``sample_sde`` every ``"sde"`` method; ``sample_pc`` our ``"sde"`` methods as predictors and the
``"corrector"`` ones as correctors. Old spellings that meant something else keep working with a
``DeprecationWarning`` (:data:`RENAMED`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from scoresde.solvers import tsit5
from scoresde.solvers.correctors import AnnealedLangevin, LangevinCorrector
from scoresde.solvers.deis import DEIS3, IPNDM
from scoresde.solvers.ode import DDIM, DPMSolverPP2M, DPMSolverPP3M, Euler, Heun
from scoresde.solvers.predictors import AncestralSampling, EulerMaruyama, ReverseDiffusion
from scoresde.solvers.unipc import UniPC2, UniPC3


@dataclass(frozen=True)
class Method:
    """One entry of the table.

    Attributes:
        name: what a user passes.
        integrates: ``"ode"`` (the probability-flow ODE), ``"sde"`` (the reverse SDE) or
            ``"corrector"`` (Langevin steps at a fixed time).
        runner: ``"scoresde"`` (our step loop), ``"torchdiffeq"`` or ``"torchsde"``.
        target: our solver class, or the name the library knows the method by.
        adaptive: chooses its own steps from ``rtol``/``atol``.
        order: the order of the solution an adaptive torchdiffeq method propagates (it sets the
            exponent of the initial-step guess); our classes declare their own.
    """

    name: str
    integrates: str
    runner: str
    target: type | str
    adaptive: bool = False
    order: int | None = None


def _ours(name: str, integrates: str, cls: type) -> Method:
    return Method(name, integrates, "scoresde", cls)


def _torchdiffeq(name: str, order: int | None = None, target: str | None = None) -> Method:
    return Method(name, "ode", "torchdiffeq", target or name, adaptive=order is not None, order=order)


def _torchsde(name: str, target: str | None = None) -> Method:
    return Method(name, "sde", "torchsde", target or name)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # the probability-flow ODE: our fixed-step solvers
        _ours("euler", "ode", Euler),
        _ours("heun", "ode", Heun),
        _ours("ddim", "ode", DDIM),
        _ours("dpmpp_2m", "ode", DPMSolverPP2M),
        _ours("dpmpp_3m", "ode", DPMSolverPP3M),
        _ours("unipc_2", "ode", UniPC2),
        _ours("unipc_3", "ode", UniPC3),
        _ours("ipndm", "ode", IPNDM),
        _ours("deis_3", "ode", DEIS3),
        # ... torchdiffeq's adaptive methods (and our tableau in its solver) ...
        _torchdiffeq("dopri5", order=5),
        _torchdiffeq("tsit5", order=5, target=tsit5.TORCHDIFFEQ_NAME),
        _torchdiffeq("dopri8", order=8),
        _torchdiffeq("bosh3", order=3),
        _torchdiffeq("fehlberg2", order=2),
        _torchdiffeq("adaptive_heun", order=2),
        # ... and its fixed-grid ones
        _torchdiffeq("torchdiffeq_euler", target="euler"),
        _torchdiffeq("midpoint"),
        _torchdiffeq("heun2"),
        _torchdiffeq("heun3"),
        _torchdiffeq("rk4"),
        _torchdiffeq("explicit_adams"),
        _torchdiffeq("implicit_adams"),
        _torchdiffeq("fixed_adams"),
        # the reverse SDE: our one-step updates (sample_sde, and sample_pc's predictors) ...
        _ours("euler_maruyama", "sde", EulerMaruyama),
        _ours("reverse_diffusion", "sde", ReverseDiffusion),
        _ours("ancestral", "sde", AncestralSampling),
        # ... and torchsde's methods
        _torchsde("torchsde_euler", target="euler"),
        _torchsde("milstein"),
        _torchsde("srk"),
        _torchsde("reversible_heun"),
        # correctors
        _ours("langevin", "corrector", LangevinCorrector),
        _ours("annealed_langevin", "corrector", AnnealedLangevin),
    )
}

RENAMED: dict[tuple[str, str], str] = {("sample_sde", "euler"): "euler_maruyama"}
"""``(function, old name) -> name``: spellings that keep working there, with a warning."""


def names(accepts: Callable[[Method], bool]) -> tuple[str, ...]:
    """The names of the methods ``accepts`` admits, in table order."""
    return tuple(name for name, method in METHODS.items() if accepts(method))


def lookup(name: str, function: str, accepts: Callable[[Method], bool], argument: str = "method") -> Method:
    """The method ``name`` if ``function`` runs it (``function`` and ``argument``, the keyword that
    was given ``name``, are for messages).

    Raises ``ValueError`` naming the choices, and for a name of the table that ``function`` does
    not run, what it is and the library method of that name if there is one."""
    renamed = RENAMED.get((function, name))
    if renamed is not None:
        warnings.warn(f"{function}({argument}={name!r}) is now {renamed!r}", DeprecationWarning, stacklevel=3)
        name = renamed
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is not None and accepts(method):
        return method
    choices = names(accepts)
    if method is None:
        raise ValueError(f"{function}: {argument} must be one of {choices}, got {name!r}")
    hint = next((f"; {m.runner}'s is {m.name!r}" for m in METHODS.values() if m.target == name and accepts(m)), "")
    raise ValueError(
        f"{function} cannot run {argument}={name!r} ({method.runner}'s {method.integrates} solver){hint}; "
        f"its {argument}s are {choices}"
    )


def is_flow_solver(method: Method) -> bool:
    """The methods of :func:`scoresde.solvers.flow.solve_flow`: torchdiffeq's."""
    return method.runner == "torchdiffeq"


def is_ode_solver(method: Method) -> bool:
    """The methods of ``sample_ode``: ours and torchdiffeq's, for the probability-flow ODE."""
    return method.integrates == "ode"


def is_sde_solver(method: Method) -> bool:
    """The methods of ``sample_sde``: ours and torchsde's, for the reverse SDE."""
    return method.integrates == "sde"


def is_predictor(method: Method) -> bool:
    """``sample_pc``'s predictors: our reverse-SDE steps."""
    return method.integrates == "sde" and method.runner == "scoresde"


def is_corrector(method: Method) -> bool:
    """``sample_pc``'s correctors."""
    return method.integrates == "corrector"
