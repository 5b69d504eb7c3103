"""The IWAE bound (likelihood.iwae_bounds) against a log-mean-exp written out by hand over the same samples."""

import math

import pytest
import torch

from likelihood import iwae_bounds
from models import CVAE, VAE


def by_hand(model, x, y, k, seed):
    """Per image, (-ELBO, IWAE) from the k samples iwae_bounds draws with this seed, each term in float64 from
    torch.distributions: log w = log p(x|z) + log N(z; 0, I) - log N(z; mu, sigma^2)."""
    with torch.no_grad():
        mu, logvar = model.encode(x, y)
        eps = torch.randn((k, *mu.shape), generator=torch.Generator().manual_seed(seed))  # iwae_bounds' draw
        z = mu + torch.exp(0.5 * logvar) * eps
        labels = None if y is None else y.repeat(k)
        p = torch.sigmoid(model.decode_logits(z.flatten(0, 1), labels).double()).view(k, len(x), -1)
    x = x.double()
    log_px_z = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    normal = torch.distributions.Normal
    log_pz = normal(0.0, 1.0).log_prob(z.double()).sum(-1)
    log_qz = normal(mu.double(), torch.exp(0.5 * logvar.double())).log_prob(z.double()).sum(-1)
    log_w = log_px_z + log_pz - log_qz  # (k, images)
    top = log_w.max(0).values
    iwae = -(top + torch.log(torch.exp(log_w - top).sum(0) / k))  # -log (1/k) sum_j w_j
    return -log_w.mean(0), iwae


@pytest.mark.parametrize("Model", [VAE, CVAE])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_iwae_is_the_log_mean_of_the_importance_weights(Model, k):
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.rand(4, 784).mul(0.9).add(0.05)  # grey levels away from 0 and 1, where log p by hand is exact enough
    y = torch.arange(4) if model.conditional else None
    elbo, iwae = iwae_bounds(model, x, y, k, torch.Generator().manual_seed(7))
    hand_elbo, hand_iwae = by_hand(model, x, y, k, seed=7)
    assert torch.allclose(elbo, hand_elbo, rtol=0, atol=1e-3), (elbo, hand_elbo)
    assert torch.allclose(iwae, hand_iwae, rtol=0, atol=1e-3), (iwae, hand_iwae)
    if k == 1:  # one sample: the bound is the ELBO's estimate itself
        assert torch.allclose(iwae, elbo, rtol=0, atol=1e-9)
    else:  # the log-mean-exp of k weights is above their mean: the IWAE bound is below the -ELBO's estimate
        assert (iwae < elbo).all()


def test_iwae_equals_minus_log_p_where_q_is_the_true_posterior():
    """A model whose q(z|x) is p(z|x): every importance weight is p(x), so for any k the bound is -log p(x)."""

    class Exact(VAE):
        # p(x|z) = prod Bernoulli(x_i; sigmoid(a_i)) does not depend on z, so p(z|x) = p(z) = q(z|x) = N(0, I)
        def encode(self, x, y=None):
            return torch.zeros(len(x), 2), torch.zeros(len(x), 2)

        def decode_logits(self, z, y=None):
            return self.a.expand(len(z), 784)

    model = Exact()
    model.a = torch.linspace(-3, 3, 784)
    x = torch.rand(3, 784)
    log_p = (x * torch.nn.functional.logsigmoid(model.a) + (1 - x) * torch.nn.functional.logsigmoid(-model.a)).sum(1)
    for k in (1, 2, 3, 50):
        elbo, iwae = iwae_bounds(model, x, None, k, torch.Generator().manual_seed(k))
        assert torch.allclose(iwae, -log_p.double(), rtol=0, atol=1e-3), (k, iwae + log_p)
        assert torch.allclose(elbo, -log_p.double(), rtol=0, atol=1e-3)
    assert math.isfinite(iwae.sum().item())
