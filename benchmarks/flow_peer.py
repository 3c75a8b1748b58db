"""flow_matching (Meta) as a peer on a trained flow: ``python benchmarks/flow_peer.py [--steps N]``.

A velocity MLP is trained by conditional flow matching (``sd.fit(..., objective="flow_matching")``)
on the linear path (rectified flow) for a 2-D Gaussian mixture. Both libraries then integrate the
*same* ODE, :math:`dx/dt = v_\\theta(x, t)` with the network's raw velocity
(:meth:`scoresde.FlowVelocity.velocity`), with dopri5 at the same tolerance:

* samples from the same noise at ``t = T`` to ``t = t_min``: ``sd.sample_ode`` against
  ``ODESolver.sample`` (flow_matching's time runs from 0, noise, to 1, data:
  :class:`~benchmarks.peers.FlowMatchingVelocity` maps :math:`\\tau \\mapsto t = T - \\tau(T - t_{min})`);
* the log-likelihood of held-out points with the exact divergence: ``sd.log_likelihood`` against
  ``ODESolver.compute_likelihood`` (from data at :math:`\\tau = 1` back to noise), the same prior.

Reported: the largest sample and log-likelihood differences and each side's NFE and wall time, at
the tolerance and again at a tight one (``--tight-tol``), where the two must converge to each other.
Writes ``benchmarks/results/flow_peer.json`` and prints a Markdown table. Time it alone with
``OMP_NUM_THREADS=1`` (PITFALLS: processes beside each other distort wall time).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the checkout's root, so `benchmarks` and `scoresde` import
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scoresde as sd
from benchmarks.peers import FlowMatchingVelocity, load_flow_matching_solver

RESULTS = Path(__file__).resolve().parent / "results"


def mixture() -> sd.GaussianMixture:
    """The data: three well separated 2-D Gaussians of unequal weight (float64)."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2, dtype=torch.float64) * v for v in (0.15, 0.3, 0.2)])
    return sd.GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def train_velocity(steps: int, *, seed: int = 0, hidden: int = 64, depth: int = 2) -> sd.FlowVelocity:
    """A float64 velocity MLP on the linear path, trained for ``steps`` flow-matching steps on :func:`mixture`."""
    gmm = mixture()
    torch.manual_seed(seed)
    model = sd.FlowVelocity(sd.nn.MLP(dim=2, hidden=hidden, depth=depth), sd.LinearPath()).double()
    sd.fit(model, model.sde, lambda n, g: gmm.sample(n, generator=g, dtype=torch.float64), steps=steps,
           objective="flow_matching", generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return model.eval()


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - start


def compare(model: sd.FlowVelocity, *, num: int = 256, tol: float = 1e-5, seed: int = 1) -> dict[str, Any]:
    """Samples and log-likelihoods of ``model`` by both libraries (dopri5, ``rtol = atol = tol``): the
    largest differences, each side's NFE and seconds. Needs flow_matching (``ValueError`` if absent)."""
    solver_class = load_flow_matching_solver()
    if solver_class is None:
        raise ValueError("flow_matching is not installed (pip install --no-deps flow_matching)")
    path = model.sde
    generator = torch.Generator().manual_seed(seed)
    z = path.prior_sample((num, 2), generator=generator, dtype=torch.float64)
    x = mixture().sample(num, generator=generator, dtype=torch.float64)

    ours, ours_s = _timed(lambda: sd.sample_ode(model, path, x_init=z, method="dopri5", rtol=tol, atol=tol,
                                                t_end=path.t_min))  # fmt: skip
    field = FlowMatchingVelocity(path, None, path.t_min, velocity_fn=model.velocity)
    solver = solver_class(field)
    forward = torch.tensor([0.0, 1.0], dtype=torch.float64)  # flow_matching's time: noise at 0, data at 1
    theirs, theirs_s = _timed(lambda: solver.sample(x_init=z, step_size=None, method="dopri5", atol=tol, rtol=tol,
                                                    time_grid=forward))  # fmt: skip
    sample_nfe = field.calls

    ll, ll_s = _timed(lambda: sd.log_likelihood(model, path, x, divergence="exact", method="dopri5", rtol=tol,
                                                atol=tol, t_end=path.t_min))  # fmt: skip
    field.calls = 0
    # compute_likelihood differentiates the velocity for its divergence: it enables grad itself
    (_, ll_theirs), ll_theirs_s = _timed(lambda: solver.compute_likelihood(
        x_1=x, log_p0=path.prior_log_prob, step_size=None, method="dopri5", atol=tol, rtol=tol,
        exact_divergence=True, time_grid=forward.flip(0)))  # fmt: skip
    # the model's own likelihood: its density at t_min differs from the data's by training error only
    exact = mixture().marginal(path, path.t_min).log_prob(x)
    return {
        "num": num, "tol": tol,
        "sample_max_abs_diff": (ours.x - theirs).abs().max().item(),
        "sample_scale": ours.x.abs().max().item(),
        "ll_max_abs_diff": (ll.log_prob - ll_theirs).abs().max().item(),
        "ll_mean_ours": ll.log_prob.mean().item(), "ll_mean_theirs": ll_theirs.mean().item(),
        "ll_mean_exact": exact.mean().item(),
        "sample": {"scoresde": {"nfe": int(ours.nfe), "seconds": ours_s},
                   "flow_matching": {"nfe": sample_nfe, "seconds": theirs_s}},
        "likelihood": {"scoresde": {"nfe": int(ll.nfe), "seconds": ll_s},
                       "flow_matching": {"nfe": field.calls, "seconds": ll_theirs_s}},
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The side-by-side table of :func:`compare`'s result."""
    rows = ["| task | scoresde NFE | flow_matching NFE | scoresde s | flow_matching s | max abs difference |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for task, diff in (("sample", "sample_max_abs_diff"), ("likelihood", "ll_max_abs_diff")):
        ours, theirs = result[task]["scoresde"], result[task]["flow_matching"]
        rows.append(f"| {task} | {ours['nfe']} | {theirs['nfe']} | {ours['seconds']:.3f} | "
                    f"{theirs['seconds']:.3f} | {result[diff]:.2e} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="flow-matching training steps")
    parser.add_argument("--num", type=int, default=512, help="samples and likelihood points")
    parser.add_argument("--tol", type=float, default=1e-5, help="dopri5 rtol = atol on both sides")
    parser.add_argument("--tight-tol", type=float, default=1e-8, help="the tolerance of the convergence check")
    parser.add_argument("--out", type=Path, default=RESULTS / "flow_peer.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = train_velocity(args.steps)
    train_s = time.perf_counter() - start
    result = compare(model, num=args.num, tol=args.tol)
    # the same solves at a tight tolerance: both sides converge to one solution of one ODE
    tight = compare(model, num=args.num, tol=args.tight_tol)
    result["tight"] = {k: tight[k] for k in ("tol", "sample_max_abs_diff", "ll_max_abs_diff", "sample", "likelihood")}
    result.update(train_steps=args.steps, train_seconds=train_s, threads=torch.get_num_threads(),
                  torch=torch.__version__, date=time.strftime("%Y-%m-%d"))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"at tol {args.tight_tol:g}: max abs difference {tight['sample_max_abs_diff']:.2e} (samples), "
          f"{tight['ll_max_abs_diff']:.2e} (log-likelihood)")  # fmt: skip
    print(f"mean log-likelihood: ours {result['ll_mean_ours']:.4f}, flow_matching {result['ll_mean_theirs']:.4f}, "
          f"exact data density at t_min {result['ll_mean_exact']:.4f} (nats per point); "
          f"trained {args.steps} steps in {train_s:.0f} s; {args.out}")  # fmt: skip
    return 0 if math.isfinite(result["ll_max_abs_diff"]) else 1


if __name__ == "__main__":
    sys.exit(main())
