"""``scoresde bench``: the repository's benchmark, from a source checkout.

The benchmark that compares this toolkit with k-diffusion, flow_matching and scipy (the peer
adapters, the run script ``benchmarks/run.py`` and the committed ``benchmarks/results/``) lives
in the repository beside the package, not in it. In a source checkout (an editable install)
this command runs that script. An installed package has no ``benchmarks/``. It offers the
public API the benchmark is built on, :mod:`scoresde.benchmark`: problems with exact
answers, error measures, and runners for any sampler or likelihood.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

NOT_A_CHECKOUT = (
    "scoresde bench: the repository's benchmark (benchmarks/run.py) runs from a source checkout only; "
    "an installed package offers scoresde.benchmark (compare_samplers, compare_likelihoods) "
    "to benchmark your own samplers and likelihoods"
)


def checkout_root() -> Path | None:
    """The source checkout this package was imported from (the folder holding ``pyproject.toml``
    and ``benchmarks/run.py`` next to ``scoresde/``), or ``None`` for an installed package."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "benchmarks" / "run.py").is_file():
        return root
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``benchmarks/run.py``'s ``main(argv)`` from the checkout (``--help`` lists its
    options); from an installed package, print one line pointing at :mod:`scoresde.benchmark`
    and return 2."""
    root = checkout_root()
    if root is None:
        print(NOT_A_CHECKOUT, file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    run = importlib.import_module("benchmarks.run")
    if Path(run.__file__).resolve() != root / "benchmarks" / "run.py":
        raise ImportError(f"'benchmarks' imports from {run.__file__}, not from the checkout {root}")
    return run.main(None if argv is None else list(argv))
