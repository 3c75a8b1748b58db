"""The benchmark harness (``scoresde bench``): samplers and likelihoods against exact answers on
Gaussian mixtures, side by side with k-diffusion, flow_matching and scipy, and the solver
overhead. Not part of the core: it imports the peers softly. See ``benchmarks/README.md``."""

from scoresde.bench.main import main

__all__ = ["main"]
