"""Execute every notebook in ``notebooks/`` headless, in fast mode, and fail on any error.

Each notebook checks its own derivations with ``assert`` cells, so a failed check is a failed
cell here. The kernel ("python3", registered in the venv by ``make install-test``) gets
``SCORESDE_FAST=1`` (small sizes: about a minute each), ``MPLBACKEND=Agg`` and this
repository on ``PYTHONPATH``, and runs with ``notebooks/`` as its working directory.
Execution happens on an in-memory copy: the committed files (with their outputs) are never
rewritten; ``make notebooks`` regenerates those.
"""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT = 300  # seconds per notebook; each takes ~10-60 s in fast mode on 2 shared cores


def kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["SCORESDE_FAST"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("JUPYTER_PLATFORM_DIRS", None)
    return env


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    before = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute(env=kernel_env())
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell failed\n{err}", pytrace=False)
    assert path.read_bytes() == before, f"executing {path.name} modified the committed file"
