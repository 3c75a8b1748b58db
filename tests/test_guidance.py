"""Guidance and imputation against exact answers on a Gaussian mixture whose components are the classes."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    NoisyClassifier,
    RePaint,
    Replacement,
    classifier_loss,
    guidance_scale,
    inpaint,
)

from .conftest import mixture


def three_classes() -> sd.GaussianMixture:
    """Three separated, correlated components with unequal weights (classes 0, 1, 2)."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.4]], [[0.5, -0.2], [-0.2, 0.3]], [[0.4, 0.0], [0.0, 0.2]]])
    return sd.GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


SDES = {"vp": sd.VPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=20.0)}


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, n_se: float = 5.0) -> None:
    """Sample mean and covariance of ``x`` within ``n_se`` standard errors of the exact ones (Gaussian
    fourth moments for the covariance's standard error)."""
    n = x.shape[0]
    diag = cov.diagonal()
    se_mean = (diag / n).sqrt()
    assert ((x.mean(0) - mean).abs() < n_se * se_mean).all(), (x.mean(0), mean, se_mean)
    se_cov = ((diag[:, None] * diag[None, :] + cov.square()) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < n_se * se_cov).all(), (torch.cov(x.T), cov, se_cov)


def component_fraction(gmm: sd.GaussianMixture, x: torch.Tensor, label: int) -> float:
    return (gmm.component(x) == label).double().mean().item()


# ----------------------------------------------------------------------------------- the oracle


def random_points(sde: sd.LinearSDE, n: int, dim: int, *, num_labels: int, seed: int):
    """Points ``(n, dim)``, times in ``[0, T]`` and labels in ``[0, num_labels)``, float64."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * sde.T
    return x, t, torch.randint(0, num_labels, (n,), generator=g)


@pytest.mark.parametrize("name", list(SDES))
def test_conditional_score_is_the_component_score_and_null_is_the_mixture(name):
    sde, gmm = SDES[name], mixture(3)
    x, t, y = random_points(sde, 30, 3, num_labels=gmm.num_classes + 1, seed=0)
    got = gmm.conditional_score_fn(sde)(x, t, y)
    for k in range(gmm.num_classes + 1):
        part = gmm if k == gmm.num_classes else sd.GaussianMixture(gmm.means[k : k + 1], gmm.covs[k : k + 1])
        rows = y == k
        torch.testing.assert_close(got[rows], part.score_fn(sde)(x[rows], t[rows]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(SDES))
def test_noisy_classifier_is_bayes_rule_and_its_gradient_the_score_difference(name):
    sde, gmm = SDES[name], mixture(3)
    x, t, y = random_points(sde, 40, 3, num_labels=3, seed=1)
    log_p = gmm.log_classifier_fn(sde)(x, t)
    # p_t(y | x) = w_y p_t(x | y) / p_t(x)
    comps = [
        sd.GaussianMixture(gmm.means[k : k + 1], gmm.covs[k : k + 1]).log_prob_fn(sde)(x, t) + gmm.weights[k].log()
        for k in range(3)
    ]
    torch.testing.assert_close(log_p, torch.stack(comps, 1) - gmm.log_prob_fn(sde)(x, t)[:, None], rtol=1e-9, atol=1e-9)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gmm.log_classifier_fn(sde)(xg, t).gather(1, y[:, None]).sum(), xg)
    closed = gmm.classifier_grad_fn(sde)(x, t, y)
    torch.testing.assert_close(closed, auto, rtol=1e-9, atol=1e-9)
    bayes = gmm.conditional_score_fn(sde)(x, t, y) - gmm.score_fn(sde)(x, t)
    torch.testing.assert_close(closed, bayes, rtol=1e-9, atol=1e-9)


def test_conditional_law_of_missing_coordinates_matches_the_normalised_joint_density():
    """p(x_2 | x_1) from ``condition`` against the joint density on a fine grid in x_2, normalised."""
    gmm = three_classes()
    mask = torch.tensor([True, False])
    for x1 in (-1.0, 0.5, 2.0):
        cond = gmm.condition(mask, torch.tensor([x1, 123.0]))
        grid = torch.linspace(-9, 9, 20001, dtype=torch.float64)
        joint = gmm.log_prob(torch.stack([torch.full_like(grid, x1), grid], 1))
        log_norm = torch.logsumexp(joint, 0) + math.log(grid[1] - grid[0])
        torch.testing.assert_close(cond.log_prob(grid[:, None]), joint - log_norm, rtol=1e-7, atol=1e-7)


def test_sample_with_labels_draws_the_samples_of_sample_and_their_components():
    gmm = three_classes()
    x, y = gmm.sample_with_labels(50_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(x, gmm.sample(50_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    for k in range(3):
        frac, w = (y == k).double().mean().item(), gmm.weights[k].item()
        assert abs(frac - w) < 5 * math.sqrt(w * (1 - w) / 50_000)
        assert_moments(x[y == k], gmm.means[k], gmm.covs[k])


# ----------------------------------------------------------------------------------- guidance


def test_two_scale_conventions_and_classifier_guidance_agree_pointwise():
    """eps_null + s (eps_y - eps_null) = (1 + w) eps_y - w eps_null with s = 1 + w, and with the exact
    classifier it is s_null + s grad log p_t(y | x): classifier-free = classifier guidance, at any s."""
    sde, gmm = sd.VPSDE(), three_classes()
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(25, 2, generator=g, dtype=torch.float64)
    t = torch.rand(25, generator=g, dtype=torch.float64)
    cond = gmm.conditional_score_fn(sde)
    for s in (0.0, 1.0, 3.0):
        by_scale = ClassifierFreeGuidance(cond, 1, scale=s)(x, t)
        by_weight = ClassifierFreeGuidance(cond, 1, weight=s - 1)(x, t)
        by_classifier = ClassifierGuidance(gmm.score_fn(sde), gmm.log_classifier_fn(sde), 1, scale=s, num_classes=3)
        torch.testing.assert_close(by_scale, by_weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(by_scale, by_classifier(x, t), rtol=1e-9, atol=1e-9)
        # the eps form: eps = -sigma * score
        sigma = sde.sigma(t)[:, None]
        eps_y, eps_null = -sigma * cond(x, t, torch.ones(25, dtype=torch.long)), -sigma * gmm.score_fn(sde)(x, t)
        torch.testing.assert_close(-sigma * by_scale, eps_null + s * (eps_y - eps_null), rtol=1e-9, atol=1e-9)
    assert guidance_scale(weight=2.0) == 3.0 and guidance_scale() == 1.0


def exact_component_reference(gmm: sd.GaussianMixture, label: int) -> float:
    """P(most responsible component = label) for x ~ component ``label``, from 200k exact draws."""
    part = sd.GaussianMixture(gmm.means[label : label + 1], gmm.covs[label : label + 1])
    return component_fraction(gmm, part.sample(200_000, generator=torch.Generator().manual_seed(9),
                                                dtype=torch.float64), label)  # fmt: skip


@pytest.mark.parametrize("kind", ["classifier_free", "classifier"])
def test_guidance_at_scale_one_samples_the_class_conditional_law(kind):
    """Exact scores at s = 1: mean, covariance and component mass of p(x | y) within Monte-Carlo error
    (probability-flow ODE, dopri5 at 1e-5: its error is far below the standard errors at n = 4000)."""
    sde, gmm, label, n = sd.VPSDE(), three_classes(), 1, 4000
    if kind == "classifier_free":
        score = ClassifierFreeGuidance(gmm.conditional_score_fn(sde), label, scale=1.0)
    else:
        score = ClassifierGuidance(gmm.score_fn(sde), gmm.log_classifier_fn(sde), label, num_classes=3)
    x = sd.sample_ode(score, sde, (n, 2), method="dopri5", rtol=1e-5, atol=1e-5, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(4)).x  # fmt: skip
    assert_moments(x, gmm.means[label], gmm.covs[label])
    ref = exact_component_reference(gmm, label)
    assert abs(component_fraction(gmm, x, label) - ref) < 5 * math.sqrt(ref * (1 - ref) / n) + 1e-3


def test_tilted_law_by_reweighting_is_the_conditional_law_at_scale_one_and_guidance_misses_it_beyond():
    """p(x) p(y | x)^s by self-normalised reweighting of exact samples; at s = 1 it is p(x | y). At s = 3
    classifier-free guidance with exact scores lands measurably away from it (a known approximation)."""
    sde, gmm, label = sd.VPSDE(), three_classes(), 2
    x0 = gmm.sample(200_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    log_cls = gmm.log_classifier_fn(sde)(x0, 0.0)[:, label]

    def tilted_mean(s: float) -> torch.Tensor:
        w = torch.softmax(s * log_cls, 0)
        return w @ x0

    torch.testing.assert_close(tilted_mean(1.0), gmm.means[label].double(), atol=0.02, rtol=0)
    n = 3000
    guided = ClassifierFreeGuidance(gmm.conditional_score_fn(sde), label, scale=3.0)
    x = sd.sample_ode(guided, sde, (n, 2), method="dopri5", rtol=1e-5, atol=1e-5, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(6)).x  # fmt: skip
    gap = (x.mean(0) - tilted_mean(3.0)).norm().item()
    se = (x.var(0).sum() / n).sqrt().item()
    assert gap > 5 * se, (gap, se)


# ----------------------------------------------------------------------------------- imputation


def energy_to(x: torch.Tensor, law: sd.GaussianMixture, seed: int) -> float:
    ref = law.sample(x.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sd.energy_distance(x, ref).item()


def test_repaint_is_closer_to_the_exact_conditional_law_than_replacement():
    """Observe x_1 = 0.5, impute x_2. The exact law is a mixture dominated by component 2 (mean -2.5);
    replacement, which sees the observation only through noisy copies, misses it badly; RePaint's
    resampling (10 per step) closes much of the gap. Energy distances against exact draws; the floor
    is the distance between two exact sample sets of the same size."""
    sde, gmm, n = sd.VPSDE(), three_classes(), 1500
    mask = torch.tensor([True, False])
    observed = torch.tensor([0.5, 0.0], dtype=torch.float64)
    exact = gmm.condition(mask, observed)
    floor = energy_to(exact.sample(n, generator=torch.Generator().manual_seed(10), dtype=torch.float64), exact, 11)
    distance = {}
    for method in ("replacement", "repaint"):
        result = inpaint(gmm.score_fn(sde), sde, mask, observed, num_samples=n, method=method, resample=10,
                         num_steps=60, t_end=1e-3, generator=torch.Generator().manual_seed(7))  # fmt: skip
        assert torch.equal(result.x[:, 0], observed[0].expand(n))
        assert result.nfe == (10 if method == "repaint" else 1) * 60 * 2 + 1
        distance[method] = energy_to(result.x[:, 1:], exact, 12)
    assert distance["replacement"] > 20 * max(floor, 1e-3), (distance, floor)
    assert distance["repaint"] < 0.7 * distance["replacement"], (distance, floor)


def test_replacement_runs_with_the_ode_sampler_and_per_sample_seeds():
    """ODE replacement keeps the observed values, and a sample does not depend on its batch."""
    sde, gmm = sd.VPSDE(), three_classes()
    mask = torch.tensor([False, True])
    observed = torch.tensor([[0.0, 1.0], [0.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
    kwargs = {"sampler": "ode", "ode_method": "heun", "num_steps": 20, "seed": 3}
    full = inpaint(gmm.score_fn(sde), sde, mask, observed, **kwargs)
    part = inpaint(gmm.score_fn(sde), sde, mask, observed[1:], sample_indices=[1, 2], **kwargs)
    assert torch.equal(full.x[:, 1], observed[:, 1])
    torch.testing.assert_close(full.x[1:], part.x, rtol=0, atol=0)
    assert full.nfe == 2 * 20 - 1  # heun: two evaluations per step but the last


# ----------------------------------------------------------------------------------- a noisy classifier


def test_trained_noisy_classifier_guides_samples_into_the_requested_component():
    """A ClassifierMLP trained on perturbed mixture data with classifier_loss: its accuracy at small t is
    close to the exact classifier's, and classifier guidance with it (exact unconditional score) puts
    most samples in the requested component."""
    torch.manual_seed(0)
    sde, gmm = sd.VPSDE(), three_classes()
    classifier = NoisyClassifier(sd.nn.ClassifierMLP(2, 3, hidden=64, depth=2), sde, 3)
    x, y = gmm.sample_with_labels(4096, generator=torch.Generator().manual_seed(1))
    sd.fit_classifier(classifier, x, y, steps=400, batch_size=256, generator=torch.Generator().manual_seed(2))
    xe, ye = gmm.sample_with_labels(2000, generator=torch.Generator().manual_seed(3))
    t = torch.full((2000,), 0.05)
    with torch.no_grad():
        acc = (classifier(xe, t).argmax(1) == ye).float().mean().item()
    exact = (gmm.log_classifier_fn(sde)(xe, t).argmax(1) == ye).float().mean().item()
    assert acc > exact - 0.03, (acc, exact)
    guided = ClassifierGuidance(gmm.score_fn(sde), classifier, 2, scale=1.0)
    samples = sd.sample_pc(guided, sde, (500, 2), num_steps=100, t_end=1e-3,
                           generator=torch.Generator().manual_seed(4)).x  # fmt: skip
    assert component_fraction(gmm, samples, 2) > 0.9


# ----------------------------------------------------------------------------------- bad input


def test_bad_labels_scales_and_unconditional_models_are_named():
    sde, gmm = sd.VPSDE(), three_classes()
    cond = gmm.conditional_score_fn(sde)
    with pytest.raises(ValueError, match=r"label 3 is outside \[0, 3\) \(num_classes=3\)"):
        ClassifierFreeGuidance(cond, 3)
    with pytest.raises(ValueError, match=r"label -1 is outside \[0, 3\)"):
        ClassifierFreeGuidance(cond, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 3\)"):
        ClassifierGuidance(gmm.score_fn(sde), gmm.log_classifier_fn(sde), 7, num_classes=3)
    with pytest.raises(ValueError, match=r"labels must be a \(batch,\) integer tensor, got torch.float32"):
        ClassifierFreeGuidance(cond, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"give scale \(s\) or weight \(w = s - 1\), not both"):
        ClassifierFreeGuidance(cond, 0, scale=2.0, weight=1.0)
    unconditional = sd.EpsilonScore(sd.nn.MLP(2), sde)
    with pytest.raises(ValueError, match=r"needs a class-conditional model, but EpsilonScore has no classes"):
        ClassifierFreeGuidance(unconditional, 0)
    with pytest.raises(ValueError, match=r"needs a class-conditional model, but function has no classes"):
        ClassifierFreeGuidance(gmm.score_fn(sde), 0)
    with pytest.raises(ValueError, match=r"pass num_classes: the classifier function"):
        ClassifierGuidance(gmm.score_fn(sde), gmm.log_classifier_fn(sde), 0)
    with pytest.raises(ValueError, match=r"labels y were given but this EpsilonScore is unconditional"):
        unconditional(torch.zeros(2, 2), 0.5, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"2 labels for a batch of 3"):
        ClassifierFreeGuidance(cond, torch.tensor([0, 1]), scale=2.0)(torch.zeros(3, 2), 0.5)


def test_bad_masks_are_named():
    sde, gmm = sd.VPSDE(), three_classes()
    observed = torch.zeros(4, 2)
    with pytest.raises(TypeError, match=r"mask must be a boolean tensor \(True = observed\), got dtype torch.int64"):
        Replacement(sde, torch.tensor([1, 0]), observed)
    with pytest.raises(ValueError, match=r"mask must be shaped like one sample \(2,\), got \(3,\)"):
        inpaint(gmm.score_fn(sde), sde, torch.tensor([True, False, True]), observed, num_steps=5)
    with pytest.raises(ValueError, match=r"mask must be shaped like one sample \(2,\), got \(4, 2\)"):
        gmm.condition(torch.ones(4, 2, dtype=torch.bool), torch.zeros(2))
    with pytest.raises(ValueError, match=r"must observe some coordinates and leave some missing, got 2 of 2"):
        gmm.condition(torch.tensor([True, True]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"observed holds NaN or inf under the mask"):
        Replacement(sde, torch.tensor([True, False]), torch.tensor([[math.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"resample must be an int >= 1, got 0"):
        RePaint(sde, torch.tensor([True, False]), observed, resample=0)
    with pytest.raises(ValueError, match=r"observed is one sample \(2,\): give num_samples"):
        inpaint(gmm.score_fn(sde), sde, torch.tensor([True, False]), torch.zeros(2), num_steps=5)


def test_hooks_are_refused_where_a_library_owns_the_steps_and_repaint_by_multistep_solvers():
    sde, gmm = sd.VPSDE(), three_classes()
    hook = RePaint(sde, torch.tensor([True, False]), torch.zeros(4, 2), resample=2)
    with pytest.raises(ValueError, match=r"torchdiffeq method 'dopri5' owns its steps and takes no step_hook"):
        sd.sample_ode(gmm.score_fn(sde), sde, (4, 2), step_hook=hook)
    with pytest.raises(ValueError, match=r"torchsde method 'srk' owns its steps and takes no step_hook"):
        sd.sample_sde(gmm.score_fn(sde), sde, (4, 2), method="srk", num_steps=4, step_hook=hook)
    with pytest.raises(ValueError, match=r"RePaint repeats each step, which a multistep solver's history"):
        sd.sample_ode(gmm.score_fn(sde), sde, (4, 2), method="dpmpp_2m", num_steps=4, step_hook=hook)
    with pytest.raises(TypeError, match=r"step_hook must be callable"):
        sd.sample_pc(gmm.score_fn(sde), sde, (4, 2), num_steps=4, step_hook=3)


def test_a_classifier_whose_time_range_misses_the_samplers_is_named():
    """Trained on [1e-2, 1] (an SDE with t_min = 1e-2), it cannot guide a sampler that runs to 1e-3."""
    sde, gmm = sd.VPSDE(), three_classes()
    classifier = NoisyClassifier(sd.nn.ClassifierMLP(2, 3), sd.VPSDE(t_min=1e-2), 3)
    guided = ClassifierGuidance(gmm.score_fn(sde), classifier, 0)
    with pytest.raises(ValueError, match=r"runs on t in \[0.001, 1\] but its score function is valid on \[0.01, 1\]"):
        sd.sample_pc(guided, sde, (4, 2), num_steps=5, t_end=1e-3)
    with pytest.raises(ValueError, match=r"sample_ode runs on t in \[0.001, 1\]"):
        sd.sample_ode(guided, sde, (4, 2), method="dopri5", t_end=1e-3)
    sd.sample_pc(guided, sde, (4, 2), num_steps=5, t_end=1e-2)  # inside its range: runs


def test_classifier_loss_checks_its_inputs():
    sde = sd.VPSDE()
    classifier = NoisyClassifier(sd.nn.ClassifierMLP(2, 3), sde, 3)
    with pytest.raises(ValueError, match=r"label 5 is outside \[0, 3\)"):
        classifier_loss(classifier, torch.zeros(2, 2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"x0 must be \(batch, \*event\) and labels \(batch,\)"):
        classifier_loss(classifier, torch.zeros(2, 2), torch.tensor([0, 1, 2]))
    loss = classifier_loss(classifier, torch.zeros(8, 2), torch.zeros(8, dtype=torch.long),
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert loss.ndim == 0 and math.isfinite(loss.item())


# ----------------------------------------------------------------------------------- conditional training


def test_a_trained_conditional_mlp_guided_by_cfg_lands_in_the_requested_component():
    """An MLP with num_classes = 3, trained by fit on labelled mixture draws with label dropout 0.2: its
    classifier-free guided samples (s = 1 and s = 3) fall in the requested component."""
    torch.manual_seed(0)
    sde, gmm = sd.VPSDE(), three_classes()
    x, y = gmm.sample_with_labels(8192, generator=torch.Generator().manual_seed(1))
    model = sd.EpsilonScore(sd.nn.MLP(2, hidden=64, depth=2, num_classes=3), sde)
    sd.fit(model, sde, x, labels=y, label_dropout=0.2, steps=800, batch_size=256,
           generator=torch.Generator().manual_seed(2))  # fmt: skip
    with torch.no_grad():
        for label in range(3):
            for scale in (1.0, 3.0):
                guided = ClassifierFreeGuidance(model, label, scale=scale)
                out = sd.sample_ode(guided, sde, (600, 2), method="heun", num_steps=30,
                                    generator=torch.Generator().manual_seed(3))  # fmt: skip
                assert component_fraction(gmm, out.x, label) > 0.97, (label, scale)
        # the null label is the unconditional model: its samples spread over the components by weight
        out = sd.sample_ode(ClassifierFreeGuidance(model, 0, scale=0.0), sde, (2000, 2), method="heun",
                            num_steps=30, generator=torch.Generator().manual_seed(4))  # fmt: skip
        fractions = torch.bincount(gmm.component(out.x), minlength=3) / 2000
    assert (fractions - gmm.weights.float()).abs().max() < 0.06, fractions


def test_dsm_loss_with_labels_is_the_conditional_loss_and_label_dropout_the_null_one():
    """With the exact conditional score the labelled loss is the conditional DSM loss: labels k on draws of
    component k, the same t and noise, equal the loss of component k's own score; label_dropout=1 gives the
    loss of the null (unconditional) score."""
    sde, gmm = sd.VPSDE(), three_classes()
    x, y = gmm.sample_with_labels(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cond = gmm.conditional_score_fn(sde)
    labelled = sd.dsm_loss(cond, sde, x, t=t, noise=noise, labels=y)
    by_hand = sd.dsm_loss(lambda z, s: cond(z, s, y), sde, x, t=t, noise=noise)
    torch.testing.assert_close(labelled, by_hand)
    dropped = sd.dsm_loss(cond, sde, x, t=t, noise=noise, labels=y, label_dropout=1.0)
    torch.testing.assert_close(dropped, sd.dsm_loss(gmm.score_fn(sde), sde, x, t=t, noise=noise))
    unconditional = sd.EpsilonScore(sd.nn.MLP(2), sde)
    with pytest.raises(ValueError, match=r"labels were given but the model \(EpsilonScore\) is unconditional"):
        sd.dsm_loss(unconditional, sde, x.float(), labels=y)
    with pytest.raises(ValueError, match=r"label 4 is outside \[0, 4\) \(num_classes=3\)"):
        sd.dsm_loss(cond, sde, x, labels=torch.full((64,), 4))
    with pytest.raises(ValueError, match=r"label_dropout must be a probability in \[0, 1\], got 1.5"):
        sd.dsm_loss(cond, sde, x, labels=y, label_dropout=1.5)
    with pytest.raises(ValueError, match=r"labels must be \(64,\), one per row of x0, got \(3,\)"):
        sd.dsm_loss(cond, sde, x, labels=y[:3])


def test_trainer_trains_a_conditional_unet_on_digit_labels_and_records_the_classes(tmp_path):
    from scoresde.checkpoint import load_checkpoint

    torch.manual_seed(0)
    data = sd.load_digits("train").subset(slice(0, 64))
    sde = sd.VPSDE()
    net = sd.nn.UNet(channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), num_classes=10)
    trainer = sd.Trainer(sd.EpsilonScore(net, sde), sde, data, out_dir=tmp_path, steps=3, batch_size=16,
                         num_grid_samples=0, device="cpu", label_dropout=0.3)  # fmt: skip
    result = trainer.train()
    assert len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["num_classes"] == 10 and state["trainer"]["label_dropout"] == 0.3
    unlabelled = sd.ImageData(data.levels, None, data.num_levels)
    with pytest.raises(ValueError, match=r"a class-conditional model \(num_classes=10\) trains on labelled"):
        sd.Trainer(sd.EpsilonScore(net, sde), sde, unlabelled, out_dir=tmp_path / "x", device="cpu")
    with pytest.raises(ValueError, match=r"label_dropout must be a number in \[0, 1\), got 1"):
        sd.TrainConfig(label_dropout=1)
