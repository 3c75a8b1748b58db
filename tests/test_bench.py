"""The repository's benchmark harness (``benchmarks/``, run by ``scoresde bench`` from a source
checkout): it imports only public names, the peer adapters reproduce our own solvers where the
algorithms coincide, and it runs end to end on a tiny problem."""

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch

from benchmarks import report
from benchmarks.grids import CANDIDATES, make_grid
from benchmarks.likelihood import all_methods
from benchmarks.peers import load_flow_matching_solver, load_k_diffusion_sampling
from benchmarks.samplers import all_samplers
from scoresde import bench
from scoresde.benchmark import standard_problem

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
needs_k_diffusion = pytest.mark.skipif(load_k_diffusion_sampling() is None, reason="k-diffusion not installed")


@pytest.fixture(scope="module", params=["vp", "ve", "subvp"])
def problem(request):
    return standard_problem(f"2d-{request.param}", 64)


def _scoresde_names(path: Path) -> list[str]:
    """Every ``scoresde`` module a file imports and every name it takes from one (``a.b:name``),
    and every attribute it reads off the package imported as a name."""
    tree = ast.parse(path.read_text())
    names, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "scoresde":
                    names.append(alias.name)
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "scoresde":
            names += [f"{node.module}:{alias.name}" for alias in node.names]
    names += [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
    ]
    return names


def test_benchmarks_import_only_public_names():
    files = sorted(BENCHMARKS.glob("*.py"))
    assert {"run.py", "peers.py", "samplers.py", "likelihood.py", "digits.py"} <= {f.name for f in files}
    used = [(f.name, name) for f in files for name in _scoresde_names(f)]
    assert not [(f, n) for f, n in used if any(part.startswith("_") for part in n.replace(":", ".").split("."))]
    for file, name in used:  # each name it takes is defined by the public module it comes from
        if ":" in name:
            module, attr = name.split(":")
            assert hasattr(importlib.import_module(module), attr), (file, name)


@needs_k_diffusion
@pytest.mark.parametrize(("ours", "theirs"), [("ddim", "euler"), ("dpmpp_2m", "dpmpp_2m")])
def test_k_diffusion_adapter_reproduces_the_same_algorithm(problem, ours, theirs):
    # DDIM is Euler in k-diffusion's sigma parametrisation and DPM-Solver++(2M) is the same
    # update: through the denoiser adapter both must match ours to rounding on the same grid
    samplers = {s.name: s for s in all_samplers(True)}
    for grid in ("karras:inf", "power:2"):
        x_ours, nfe_ours = samplers[f"scoresde:{ours}"].run(problem, problem.x_init, 10, grid, 0)
        x_theirs, nfe_theirs = samplers[f"k-diffusion:{theirs}"].run(problem, problem.x_init, 10, grid, 0)
        assert nfe_ours == nfe_theirs == 10
        torch.testing.assert_close(x_ours, x_theirs, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", CANDIDATES)
def test_candidate_grids_are_descending_from_T_to_t_end(problem, name):
    grid = make_grid(problem.sde, 7, name, 1e-3)
    end = float(name.partition("@")[2] or 1e-3)  # power:2@0.03 ends at 0.03
    assert grid.shape == (8,) and grid[0] == problem.sde.T and grid[-1] == end
    assert (grid[1:] < grid[:-1]).all()


def test_scoresde_bench_runs_the_checkout_harness_end_to_end(tmp_path):
    out = ["--smoke", "--no-peers", "--out", str(tmp_path)]
    assert bench.checkout_root() == BENCHMARKS.parent
    assert bench.main(["--only", "sampling", *out]) == 0
    rows = json.loads((tmp_path / "sampling.json").read_text())["rows"]
    assert {r["sampler"] for r in rows} >= {"scoresde:unipc_3", "scoresde:dpmpp_3m", "scoresde:unipc_3+tuned",
                                            "scoresde:ipndm_afs"}  # fmt: skip
    searched = [r for r in rows if r["sampler"].endswith(("+tuned", "+dp"))]
    # each says whether the searched grid won on the held-back pilot noise or what it fell back to, and its cost
    assert searched and all(r["grid"].startswith(("nelder_mead(", "dp(", "fallback:")) and r["level"] <= 20
                            and r["grid_search_nfe"] > 0 for r in searched)  # fmt: skip
    assert all(r["nfe"] <= r["level"] for r in rows if r["sampler"].startswith(("scoresde:unipc", "scoresde:ipndm")))
    afs = {r["level"]: r["nfe"] for r in rows if r["sampler"] == "scoresde:ipndm_afs"}
    assert afs == {r["level"]: r["nfe"] for r in rows if r["sampler"] == "scoresde:ipndm"}  # one step more, same NFE
    assert all(("rmse" in r) == r["deterministic"] for r in rows)
    assert (tmp_path / "results.md").exists() and (tmp_path / "sampling.png").exists()
    # a part run alone leaves the other part's JSON alone and keeps its tables in results.md
    sampling = (tmp_path / "sampling.json").read_text()
    assert bench.main(["--only", "likelihood", *out]) == 0
    assert (tmp_path / "sampling.json").read_text() == sampling
    ll_rows = json.loads((tmp_path / "likelihood.json").read_text())["rows"]
    assert {r["tol"] for r in ll_rows} == {1e-3, 1e-4} and {r["library"] for r in ll_rows} == {"scoresde", "scipy"}
    text = (tmp_path / "results.md").read_text()
    assert "## Likelihood targets" in text and "## Few-step sampling targets" in text
    assert "The sampling tables below are from an earlier run" in text
    assert "likelihood tables below are from an earlier run" not in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_scoresde_bench_help_and_installed_package(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0 and "usage: scoresde bench" in capsys.readouterr().out
    monkeypatch.setattr(bench, "checkout_root", lambda: None)  # as from an installed package
    assert bench.main(["--only", "sampling"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source checkout" in err and "scoresde.benchmark" in err


@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_scipy_peer_solves_our_likelihood_ode(divergence, solver):
    # the scipy rows are paired with ours by divergence: with the shared probe both integrate one
    # augmented ODE, so at tight tolerances they agree far below the 1e-3 nats/dim of the target
    problem = standard_problem("2d-vp", 32)
    x = problem.data(2)
    methods = {m.name: m for m in all_methods(with_peers=False)}
    ours, _ = methods[f"scoresde:{solver}/{divergence}"].run(problem, x, 1e-9)
    theirs, _ = methods[f"scipy:RK45/{divergence}"].run(problem, x, 1e-9)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_likelihood_targets_pair_ours_with_scipy_of_the_same_divergence():
    def row(method, nfe, err):
        return {"problem": "p", "method": method, "nfe": nfe, "seconds": nfe / 100, "max_err_per_dim": err}

    rows = [
        row("scoresde:dopri5/exact", 60, 2e-3), row("scoresde:dopri5/exact", 80, 5e-4),
        row("scoresde:dopri5/hutchinson", 90, 9e-4), row("scipy:RK45/exact", 100, 1e-3),
        row("scipy:RK45/hutchinson", 120, 1e-4), row("k-diffusion:log_likelihood", 160, 1e-4),
    ]  # fmt: skip
    grid = [row("scoresde:tsit5_grid/exact", 70, 9e-4) | {"sample_nfe_mean": 40.0},
            row("scoresde:tsit5_grid/exact", 50, 3e-3) | {"sample_nfe_mean": 30.0}]  # fmt: skip
    exact, on_grid, hutchinson = report.likelihood_targets(rows + grid)
    assert (exact["scoresde_nfe"], exact["scipy_nfe"], exact["nfe_ratio_vs_scipy"]) == (80, 100, 0.8)
    assert exact["sample_nfe_ratio_vs_scipy"] == 0.8  # without sample_nfe_mean every sample took nfe
    # on a grid: its calls and, apart, the evaluations per sample of its cheapest accurate run
    assert (on_grid["scoresde_nfe"], on_grid["scoresde_sample_nfe"], on_grid["sample_nfe_ratio_vs_k_diffusion"]) == (
        70, 40.0, 0.25)  # fmt: skip
    assert (hutchinson["scoresde_nfe"], hutchinson["scipy_nfe"], hutchinson["nfe_ratio_vs_scipy"]) == (90, 120, 0.75)
    assert exact["k_diffusion_nfe"] == hutchinson["k_diffusion_nfe"] == 160


def test_likelihood_summary_takes_the_geometric_mean_over_point_sets():
    def row(point_set, method, nfe):
        return {"problem": "p", "point_set": point_set, "method": method, "nfe": nfe, "seconds": nfe / 100,
                "max_err_per_dim": 5e-4}  # fmt: skip

    rows = [row(0, "scoresde:dopri5/hutchinson", 80), row(0, "k-diffusion:log_likelihood", 100),
            row(1, "scoresde:dopri5/hutchinson", 90), row(1, "k-diffusion:log_likelihood", 160),
            row(1, "scipy:RK45/hutchinson", 90)]  # fmt: skip
    targets = report.likelihood_targets(rows)
    assert [(t["point_set"], t["nfe_ratio_vs_k_diffusion"]) for t in targets] == [(0, 0.8), (1, 0.5625)]
    (summary,) = report.likelihood_summary(targets)
    assert summary["point_sets"] == 2
    assert summary["nfe_ratio_vs_k_diffusion"] == pytest.approx((0.8 * 0.5625) ** 0.5)
    assert summary["nfe_ratio_vs_k_diffusion_range"] == "0.562-0.8"
    assert summary["nfe_ratio_vs_scipy"] == 1.0 and summary["nfe_ratio_vs_scipy_range"] == "1-1 (1)"


def test_sampling_targets_compare_the_best_of_each_library_within_the_budget():
    def row(sampler, library, nfe, rmse, median):
        return {"problem": "p", "sampler": sampler, "library": library, "grid": "g", "level": nfe, "nfe": nfe,
                "rmse": rmse, "median_error": median}  # fmt: skip

    rows = [row("scoresde:a", "scoresde", 10, 0.02, 0.004), row("scoresde:b", "scoresde", 9, 0.0125, 0.01),
            row("scoresde:a+tuned", "scoresde", 10, 0.01, 0.006), row("scoresde:c", "scoresde", 20, 0.001, 0.001),
            row("k-diffusion:a", "k-diffusion", 10, 0.05, 0.02), row("diffusers:a", "diffusers", 10, 0.04, 0.03),
            {"problem": "p", "sampler": "scoresde:sde", "library": "scoresde", "level": 5, "nfe": 5}]  # fmt: skip
    at_10, at_20 = report.sampling_targets(rows)  # no row at budget 5 has pathwise errors: no NFE-5 target
    # each error has its own best sampler; the peer is the best of k-diffusion and diffusers
    assert (at_10["scoresde_best_rmse"], at_10["peer_best_rmse"]) == ("scoresde:a+tuned (g, 10)", "diffusers:a (g, 10)")
    assert (at_10["untuned_best_rmse"], at_10["ratio_rmse"], at_10["untuned_ratio_rmse"]) == (
        "scoresde:b (g, 9)", 0.25, 0.3125)
    assert (at_10["scoresde_median"], at_10["peer_median"], at_10["ratio_median"]) == (0.004, 0.02, 0.2)
    assert at_10["met"] and at_20["scoresde_rmse"] == 0.001 and at_20["peer_rmse"] == 0.04


@pytest.mark.skipif(load_flow_matching_solver() is None, reason="flow_matching not installed")
def test_flow_matching_peer_integrates_the_same_trained_velocity():
    # one trained rectified flow, dopri5 on both sides from the same noise: they solve one ODE (ours in
    # the reference VP coordinates), so samples and likelihoods converge to each other as the tolerance
    # falls, and at a tight tolerance agree far below the mixture's scale
    from benchmarks.flow_peer import compare, train_velocity

    model = train_velocity(150, hidden=32)
    loose, tight = compare(model, num=16, tol=1e-5), compare(model, num=16, tol=1e-8)
    assert tight["sample_max_abs_diff"] < 1e-5 and tight["ll_max_abs_diff"] < 1e-5
    assert tight["sample_max_abs_diff"] < loose["sample_max_abs_diff"] / 100
    assert tight["ll_max_abs_diff"] < loose["ll_max_abs_diff"] / 100
    for task in ("sample", "likelihood"):
        assert tight[task]["scoresde"]["nfe"] > loose[task]["scoresde"]["nfe"] > 0
        assert tight[task]["flow_matching"]["nfe"] > loose[task]["flow_matching"]["nfe"] > 0
