"""-log p(x) integrated over the latent plane (likelihood.py, evaluate.py --exact), against closed forms and IWAE."""

import json
import math

import pytest
import torch
from conftest import run

from likelihood import exact_nll, iwae_bounds, log_bernoulli, model_exact_nll
from mnist import load_mnist
from models import VAE, load_model

pytestmark = pytest.mark.slow  # runs training: not in the quick tier (-m 'not slow')

D, S = 20, 0.25  # x in R^20, noise sd: the posterior's sd is about S / sqrt(D) = 0.06, as narrow as a trained VAE's


def linear_gaussian(seed=0, mirror=False):
    """p(x|z) = N(x; W z + b, S^2 I), p(z) = N(0, I): p(x) = N(b, W W^T + S^2 I); and 12 images, some far out.

    mirror: images of z with z1 > 0.5 only, whose posteriors under the folded model have two modes, at z1 > 0 and
    its mirror.
    """
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(D, 2, generator=g), torch.randn(D, generator=g)
    z = torch.cat([torch.randn(8, 2, generator=g), torch.tensor([[4.0, -3.5], [-6.0, 0.5], [0.0, 0.0], [5.0, 5.0]])])
    if mirror:
        z[:, 0] = z[:, 0].abs() + 0.5
    x = z @ W.T + b + S * torch.randn(len(z), D, generator=g)
    max_ll = -D / 2 * math.log(2 * math.pi * S**2)  # log N(x; x, S^2 I): no z does better
    return W, b, x, max_ll


def gaussian_log_likelihood(x, W, b, fold=False):
    def log_likelihood(z, index):
        if fold:  # p(x|z) depends on |z1|: every posterior mode has a mirror image across z1 = 0
            z = torch.stack([z[:, 0].abs(), z[:, 1]], 1)
        mean = z.double() @ W.double().T + b.double()  # in float64, as the closed forms
        return torch.distributions.Normal(mean, S).log_prob(x[index, None, :].double()).sum(-1)

    return log_likelihood


def linear_log_px(x, W, b):
    cov = W.double() @ W.double().T + S**2 * torch.eye(D, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(b.double(), cov).log_prob(x.double())


def posterior(x, W, b):
    """Mean and covariance of p(z|x) for the linear-Gaussian model."""
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T.double() @ W.double() / S**2)
    return (x.double() - b.double()) @ W.double() / S**2 @ cov, cov


def test_linear_gaussian_matches_the_closed_form():
    W, b, x, max_ll = linear_gaussian()
    true = -linear_log_px(x, W, b)
    nll, info = exact_nll(gaussian_log_likelihood(x, W, b), len(x), max_ll)
    assert info["converged"].all()
    assert (nll - true).abs().max() < 1e-4, nll - true  # the method is good to about 3e-6 nat here
    mean, _ = posterior(x, W, b)  # each image's box holds its posterior mean, even far out in the prior's tail
    box = info["box"].double()
    assert (
        (box[:, 0] < mean[:, 0]) & (mean[:, 0] < box[:, 1]) & (box[:, 2] < mean[:, 1]) & (mean[:, 1] < box[:, 3])
    ).all()


def test_two_mode_posterior_matches_the_closed_form():
    """p(x|z) = N(x; W (|z1|, z2) + b, S^2 I): p(x) = 2 p_linear(x) P_linear(z1 > 0 | x), two mirror modes.

    The hint points at one mode only: the other must be found by the integration itself.
    """
    W, b, x, max_ll = linear_gaussian(seed=1, mirror=True)
    mean, cov = posterior(x, W, b)
    # folding: the mass of the linear model's posterior on z1 > 0, and the mirror of the part on z1 < 0
    log_positive = torch.special.log_ndtr(mean[:, 0] / cov[0, 0].sqrt())  # log Phi, exact also far in the tail
    true = -(math.log(2) + linear_log_px(x, W, b) + log_positive)
    assert (mean[:, 0] > 5 * cov[0, 0].sqrt()).all()  # two modes, apart
    hints = torch.stack([mean[:, 0].abs(), mean[:, 1]], 1).float()
    nll, info = exact_nll(gaussian_log_likelihood(x, W, b, fold=True), len(x), max_ll, hints=hints)
    assert (nll - true).abs().max() < 1e-4, nll - true  # the method is good to about 3e-6 nat here
    assert (info["box"][:, 0] < -hints[:, 0]).all()  # the mode the hint did not show is in the box too


@pytest.fixture(scope="module")
def reference_vae():
    model, checkpoint = load_model("runs/VAE/reference/checkpoint.pt")
    x, y = load_mnist("data", train=False)
    return model, x[:20], y[:20]


def test_exact_is_below_and_close_to_iwae_on_the_reference_vae(reference_vae):
    model, x, y = reference_vae
    nll, info = model_exact_nll(model, x, y)
    elbo, iwae = iwae_bounds(model, x, y, 5000, torch.Generator().manual_seed(0))
    assert info["converged"].all()
    # IWAE's estimate is above the exact value only in expectation: where q(z|x) is much narrower than the
    # posterior its weights are heavy-tailed, and one image's estimate can fall a nat below (image 3 here), so
    # the mean over 20 images is no test. The ELBO is above for every image, as the mathematics requires.
    assert (nll < elbo).all() and iwae.mean() < elbo.mean()
    # where q(z|x) covers the posterior, 5000 importance samples get within a few hundredths of it
    gap = iwae - nll
    assert gap.median().abs() < 0.05, gap
    assert (gap > -0.3).float().mean() >= 0.9, gap  # IWAE is an upper bound up to its noise
    assert (elbo - nll).mean() > 1  # while the ELBO is nats away: the mean KL(q(z|x) || p(z|x))


def test_exact_needs_a_2d_latent(tmp_path):
    model = VAE(latent_dim=3)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model": "VAE",
            "args": {"latent_dim": 3, "seed": 0},
            "epoch": 0,
            "weights": model.state_dict(),
            "test_loss": 0.0,
        },
        path,
    )
    result = run("evaluate.py", "--checkpoint", path, "--exact", "--limit", 10, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--exact" in lines[0] and "latent size 3" in lines[0], result.stderr


def test_json_has_the_exact_value_and_the_gaps():
    result = run("evaluate.py", "--checkpoint", "runs/VAE/reference", "--exact", "--limit", 20, "--k", 200, "--json")
    r = json.loads(result.stdout)["VAE"]
    assert r["n_images"] == 20 and r["k"] == 200
    assert r["exact_nll"] < r["iwae_nll"] < r["test_loss"]
    assert abs(r["elbo_gap"] - (r["test_loss"] - r["exact_nll"])) < 1e-9
    assert abs(r["iwae_gap"] - (r["iwae_nll"] - r["exact_nll"])) < 1e-9
    assert 120 < r["exact_nll"] < 160  # grey-level MNIST under the 2-d reference VAE: about 130 nats


def test_latent_dist_draws_the_exact_posterior(tmp_path):
    from PIL import Image

    result = run(
        "latent_dist.py", "--checkpoint", "runs/VAE/reference", "--images-dir", tmp_path, "--posterior-images", 20
    )
    assert str(tmp_path / "VAE_posterior.png") in result.stdout
    width, height = Image.open(tmp_path / "VAE_posterior.png").size
    assert width > 1000 and height > 1000


def test_exact_is_computed_for_the_2d_checkpoints_among_others(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model": "VAE",
            "args": {"latent_dim": 3, "seed": 0},
            "epoch": 0,
            "weights": VAE(latent_dim=3).state_dict(),
            "test_loss": 0.0,
        },
        path,
    )
    result = run(
        "evaluate.py",
        "--checkpoint",
        "runs/VAE/reference",
        "--checkpoint",
        path,
        "--exact",
        "--limit",
        10,
        "--k",
        20,
        "--json",
    )
    two, three = json.loads(result.stdout).values()
    assert "exact_nll" in two and two["exact_nll"] <= two["iwae_nll"]
    assert "exact_nll" not in three and three["iwae_nll"] > 0 and three["checkpoint"] == str(path)


def test_exact_matches_a_brute_force_grid_on_the_reference_vae(reference_vae):
    """The adaptive integration against a plain sum on a fine grid (spacing 0.005) over the box that holds the mass."""
    model, x, y = reference_vae
    x, y = x[:5], y[:5]
    nll, info = model_exact_nll(model, x, y)
    step = 0.005
    for i in range(len(x)):
        z1_lo, z1_hi, z2_lo, z2_hi = info["box"][i].tolist()
        grid = [
            torch.arange(lo - 0.25, hi + 0.25, step, dtype=torch.float64) + step / 2
            for lo, hi in ((z1_lo, z1_hi), (z2_lo, z2_hi))
        ]
        z = torch.stack(torch.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            log_like = torch.cat(
                [
                    log_bernoulli(model.decode_logits(z[j : j + 20000].float()), x[i]).double()
                    for j in range(0, len(z), 20000)
                ]
            )
        log_joint = log_like - 0.5 * (z**2).sum(1) - math.log(2 * math.pi)
        brute = -(torch.logsumexp(log_joint, 0) + 2 * math.log(step)).item()
        assert abs(brute - nll[i].item()) < 0.02, (i, brute, nll[i].item())
