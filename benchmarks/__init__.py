"""The repository's benchmark harness (``python benchmarks/run.py``, ``make bench``, or
``scoresde bench`` from a source checkout): every sampler family and the likelihood against exact
answers on Gaussian mixtures, side by side with k-diffusion, flow_matching and scipy, and the
solver overhead. Built on the public :mod:`scoresde.benchmark` API and public ``scoresde`` names
only; the peers are imported softly. See ``benchmarks/README.md``."""
