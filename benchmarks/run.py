"""Run the benchmark harness from a checkout: ``python benchmarks/run.py [--full] [--only ...]``.

The harness lives in :mod:`scoresde.bench` (so ``scoresde bench`` works from an installed
package); this file only puts the checkout first on the path and calls its ``main``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoresde.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
