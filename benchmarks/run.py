"""The repository's benchmark: ``python benchmarks/run.py [--full] [--only ...]``, ``make bench``,
or ``scoresde bench`` from a source checkout. It runs the solver, likelihood and overhead
benchmarks and writes the results.

Writes ``<out>/sampling.json``, ``likelihood.json``, ``overhead.json`` (raw rows and metadata),
``results.md`` (the tables and the target ratios), ``sampling.png`` and ``likelihood.png``
(``<out>`` defaults to ``benchmarks/results/``). A part left out by ``--only`` keeps its JSON,
and ``results.md`` keeps its tables, marked with the date of that earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the checkout's root, so `benchmarks` and `scoresde` import
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import report
from benchmarks.grids import CANDIDATES, QUICK_CANDIDATES
from benchmarks.likelihood import all_methods, run_likelihood
from benchmarks.overhead import run_overhead
from benchmarks.peers import load_diffusers_schedulers, load_flow_matching_solver, load_k_diffusion_sampling
from benchmarks.samplers import all_samplers
from benchmarks.sampling import run_sampling
from scoresde.benchmark import STANDARD_PROBLEMS, Problem, markdown_table, standard_problem

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("sampling", "likelihood", "overhead")
ALL_PROBLEMS = STANDARD_PROBLEMS
FULL_PROBLEMS = tuple(f"{m}-{s}" for m in ("2d", "16d") for s in ("vp", "subvp", "ve")) + tuple(
    f"{m}-{s}" for m in ("2dthin", "8dmany", "32d") for s in ("vp", "ve")
)
QUICK_PROBLEMS = ("2d-vp", "2d-ve", "16d-vp", "16d-ve", "2dthin-vp", "8dmany-ve", "32d-vp")
LIKELIHOOD_PROBLEMS = ("2d-vp", "2d-ve", "16d-vp", "16d-ve")
MODES = {
    "quick": {"budgets": [5, 10, 20, 50], "samples": {"2d": 500, "16d": 300}, "pilot": 256, "repeats": 3,
              "problems": QUICK_PROBLEMS, "grids": QUICK_CANDIDATES,
              "ll_problems": LIKELIHOOD_PROBLEMS, "ll_points": {"2d": 128, "16d": 64}, "ll_point_sets": 1,
              "tolerances": [1e-2, 1e-3, 1e-4, 3e-5, 1e-5, 3e-6]},
    # full: a quarter-decade tolerance grid, since "the fewest NFE within 1e-3" moves with the grid
    # step (a half decade in tolerance is about 25 % in NFE for a fifth-order pair)
    "full": {"budgets": [5, 10, 15, 20, 30, 50, 100, 200], "samples": {"2d": 4000, "16d": 2000}, "pilot": 512,
             "problems": FULL_PROBLEMS, "grids": CANDIDATES,
             "repeats": 5, "ll_problems": LIKELIHOOD_PROBLEMS, "ll_points": {"2d": 512, "16d": 256}, "ll_point_sets": 3,
             "tolerances": [10 ** (-k / 4) for k in range(8, 25)]},
    # smoke: seconds, for the tests; it checks that the harness runs, not the numbers
    "smoke": {"budgets": [5], "samples": {"2d": 64, "16d": 32}, "pilot": 32, "repeats": 1,
              "problems": ("2d-vp",), "grids": ("power:1", "karras:inf"),
              "ll_problems": ("2d-vp",), "ll_points": {"2d": 16, "16d": 8}, "ll_point_sets": 1,
              "tolerances": [1e-3, 1e-4]},
}  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scoresde bench",
        description="The repository's solver, likelihood and overhead benchmarks (writes benchmarks/results/).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full mode (more samples, budgets, tolerances)")
    size.add_argument("--smoke", action="store_true", help="a tiny run (seconds) that checks the harness runs")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--problems", nargs="+", choices=ALL_PROBLEMS, default=None,
                        help="problems (default: quick 7, full 12, smoke 2d-vp; likelihood 2-D/16-D VP/VE)")
    parser.add_argument("--no-peers", action="store_true", help="skip k-diffusion, diffusers and flow_matching")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)")
    return parser.parse_args(argv)  # fmt: skip


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file in its folder, then a rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write(out: Path, name: str, meta: dict, rows: list[dict]) -> None:
    _write_text(out / name, json.dumps({"meta": meta, "rows": rows}, indent=1))


def _describe(meta: dict) -> str:
    return f"Mode: {meta['mode']}, torch {meta['torch']}, {meta['threads']} thread(s), {meta['date']}"


def _sampling_sections(rows: list[dict]) -> list[str]:
    return ["## Few-step sampling targets (RMSE and median-error ratios to the best peer, target <= 0.5)",
            "Against the best of k-diffusion and diffusers on any of their grids; `untuned` is scoresde "
            "without the searched grids (`+tuned`, `+dp`). Searched grids come from pilot noise disjoint "
            "from the evaluated noise; their cost is in the all-rows table (`grid_search_nfe`, seconds).",
            markdown_table(report.sampling_targets(rows), [
                "problem", "nfe_budget", "scoresde_best_rmse", "scoresde_rmse", "untuned_best_rmse", "untuned_rmse",
                "peer_best_rmse", "peer_rmse", "ratio_rmse", "untuned_ratio_rmse", "scoresde_median",
                "untuned_median", "peer_median", "ratio_median", "untuned_ratio_median", "met"]),
            "## Sampling: all rows",
            markdown_table(rows, [
                "problem", "sampler", "grid", "level", "nfe", "rmse", "median_error", "mode_switch_fraction",
                "sw", "sw_floor", "log_p_gap", "log_p_gap_floor", "seconds", "grid_search_nfe",
                "grid_search_seconds"])]  # fmt: skip


def _likelihood_sections(rows: list[dict]) -> list[str]:
    targets = report.likelihood_targets(rows)
    ratios = [c for r in ("nfe_ratio_vs_k_diffusion", "nfe_ratio_vs_scipy", "fitted_nfe_ratio_vs_k_diffusion",
                          "fitted_nfe_ratio_vs_scipy", "sample_nfe_ratio_vs_k_diffusion", "time_ratio_vs_k_diffusion")
              for c in (r, f"{r}_range")]
    return ["## Likelihood targets (max error <= 1e-3 nats/dim; ratios ours / peer, geometric mean over the "
            "point sets, and their range)",
            markdown_table(report.likelihood_summary(targets), ["problem", "scoresde_method", "point_sets",
                                                                       *ratios]),
            "## Likelihood targets per point set",
            markdown_table(targets, [
                "problem", "point_set", "scoresde_method", "scoresde_nfe", "scoresde_sample_nfe", "k_diffusion_nfe",
                "scipy_nfe", "nfe_ratio_vs_k_diffusion", "nfe_ratio_vs_scipy", "fitted_nfe_ratio_vs_k_diffusion",
                "fitted_nfe_ratio_vs_scipy", "sample_nfe_ratio_vs_k_diffusion", "scoresde_seconds",
                "k_diffusion_seconds", "time_ratio_vs_k_diffusion"]),
            "## Likelihood: all rows",
            markdown_table(rows, [
                "problem", "point_set", "method", "tol", "nfe", "sample_nfe_mean", "sample_nfe_max", "seconds",
                "max_err_per_dim", "mean_err_per_dim", "mean_err_vs_truth_per_dim", "design_nfe",
                "grid_steps"])]  # fmt: skip


def _overhead_sections(rows: list[dict]) -> list[str]:
    return ["## Solver overhead per NFE / one network forward (target <= 0.05)",
            f"Network: {rows[0]['network']}, batch {rows[0]['batch']}.",
            markdown_table(rows, ["solver", "nfe", "solver_seconds_per_nfe",
                                         "network_seconds_per_forward", "ratio"])]  # fmt: skip


SECTIONS = {"sampling": _sampling_sections, "likelihood": _likelihood_sections, "overhead": _overhead_sections}
"""Each part's ``results.md`` sections from its rows; parts not run this time keep the tables of
their last ``<part>.json`` in the output folder."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks named by ``argv`` (``--help`` lists the options); returns 0."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    mode_name = "full" if args.full else "smoke" if args.smoke else "quick"
    mode = MODES[mode_name]
    args.out.mkdir(parents=True, exist_ok=True)
    peers = not args.no_peers
    notes = []
    if peers and load_k_diffusion_sampling() is None:
        notes.append("k-diffusion is not installed: its samplers and log_likelihood are skipped")
    if peers and load_diffusers_schedulers() is None:
        notes.append("diffusers is not installed: its schedulers are skipped")
    if peers and load_flow_matching_solver() is None:
        notes.append("flow_matching is not installed: its likelihood is skipped")
    for note in notes:
        print(f"note: {note}")
    meta = {
        "mode": mode_name, "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": notes,
    }  # fmt: skip
    sections = [_describe(meta) + "."]
    sections += [f"Note: {n}." for n in notes]

    def problems(names: Sequence[str], sizes: dict[str, int]) -> list[Problem]:
        """Each problem with the 2-D size for a 2-D mixture, else the 16-D one."""
        return [standard_problem(n, sizes["2d" if n.startswith("2d") else "16d"]) for n in names]

    fresh: dict[str, list[dict]] = {}  # rows of the parts run now
    if "sampling" in args.only:
        with_k_diffusion = peers and load_k_diffusion_sampling() is not None
        fresh["sampling"] = run_sampling(
            problems(args.problems or mode["problems"], mode["samples"]), all_samplers(with_k_diffusion, peers),
            mode["budgets"], pilot_size=mode["pilot"], repeats=mode["repeats"], grids=mode["grids"],
        )  # fmt: skip
        _write(args.out, "sampling.json", meta | {"budgets": mode["budgets"]}, fresh["sampling"])
        report.plot_sampling(fresh["sampling"], args.out / "sampling.png")
    if "likelihood" in args.only:
        names = args.problems or mode["ll_problems"]
        fresh["likelihood"] = run_likelihood(
            problems(names, mode["ll_points"]), all_methods(peers), mode["tolerances"], repeats=mode["repeats"],
            point_sets=mode["ll_point_sets"],
        )  # fmt: skip
        _write(args.out, "likelihood.json", meta, fresh["likelihood"])
        report.plot_likelihood(fresh["likelihood"], args.out / "likelihood.png")
    if "overhead" in args.only:
        fresh["overhead"] = run_overhead(mode["repeats"])
        _write(args.out, "overhead.json", meta, fresh["overhead"])
    for part in PARTS:
        path = args.out / f"{part}.json"
        if part in fresh:
            sections += SECTIONS[part](fresh[part])
        elif path.exists():
            saved = json.loads(path.read_text())
            earlier_notes = "".join(f"; note: {n}" for n in saved["meta"].get("notes", []))
            sections.append(
                f"The {part} tables below are from an earlier run ({_describe(saved['meta'])}{earlier_notes})."
            )
            sections += SECTIONS[part](saved["rows"])
    text = "\n\n".join(sections) + "\n"
    _write_text(args.out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
