import math

import pytest
import torch
import torch.nn.functional as F

from models import ARCHS, CVAE, VAE, load_checkpoint, loss_function
from runs import read_checkpoint


@pytest.mark.parametrize("Model", [VAE, CVAE])
@pytest.mark.parametrize("shape", [(5, 784), (5, 1, 28, 28)])
def test_shapes(Model, shape):
    model = Model(latent_dim=3)
    x, y = torch.rand(shape), torch.arange(5)
    labels = (y,) if model.conditional else ()
    mu, logvar = model.encode(x, *labels)
    assert mu.shape == logvar.shape == (5, 3)
    images = model.decode(torch.randn(5, 3), *labels)
    assert images.shape == (5, 784) and images.min() >= 0 and images.max() <= 1
    logits, mu, logvar = model(x, *labels)
    assert logits.shape == (5, 784) and mu.shape == logvar.shape == (5, 3)
    assert model.latent_dim == 3 and model.conditional == (Model is CVAE)


def test_layer_sizes_follow_the_original():
    vae, cvae = VAE(), CVAE()
    sizes = lambda m: [
        (layer.in_features, layer.out_features) for layer in m.modules() if isinstance(layer, torch.nn.Linear)
    ]
    assert sizes(vae.encoder) == [(784, 256), (256, 512), (512, 2), (512, 2)]
    assert sizes(vae.decoder) == [(2, 256), (256, 784)]
    assert sizes(cvae.encoder) == [(794, 256), (256, 512), (512, 2), (512, 2)]
    assert sizes(cvae.decoder) == [(12, 512), (512, 784)]
    # --arch davidson: the MLPs of Davidson et al. 2018, ReLU throughout
    davidson = VAE(latent_dim=20, arch="davidson")
    assert sizes(davidson.encoder) == [(784, 256), (256, 128), (128, 20), (128, 20)]
    assert sizes(davidson.decoder) == [(20, 128), (128, 256), (256, 784)]
    assert [type(m).__name__ for m in davidson.encoder.body] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert [type(m).__name__ for m in davidson.decoder.body] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    logits, mu, logvar = davidson(torch.rand(3, 784))
    assert logits.shape == (3, 784) and mu.shape == logvar.shape == (3, 20)


def test_cvae_needs_labels():
    with pytest.raises(ValueError, match="needs the labels"):
        CVAE()(torch.rand(2, 784))


def test_cvae_label_changes_the_decoding():
    model, z = CVAE(), torch.zeros(2, 2)
    a, b = model.decode(z, torch.tensor([0, 1]))
    assert not torch.allclose(a, b)


def test_loss_against_hand_computation():
    x = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.2, 0.0]])
    p = torch.tensor([[0.1, 0.8, 0.5], [0.6, 0.3, 0.9]])
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.0]])
    bce_hand = [
        -sum(xi * math.log(pi) + (1 - xi) * math.log(1 - pi) for xi, pi in zip(xr, pr))
        for xr, pr in zip(x.tolist(), p.tolist())
    ]
    # KL(N(mu, s^2) || N(0, 1)) = (s^2 + mu^2 - 1 - log s^2) / 2 per dimension
    kld_hand = [
        sum((math.exp(lv) + m * m - 1 - lv) / 2 for m, lv in zip(mr, lr))
        for mr, lr in zip(mu.tolist(), logvar.tolist())
    ]
    # 781 more pixels at x = 0 with logit -100 add exp(-100) each: nothing at float32 precision
    logits = torch.cat([torch.logit(p), torch.full((2, 781), -100.0)], 1)
    total, bce, kld = loss_function(logits, F.pad(x, (0, 781)), mu, logvar)
    assert bce.item() == pytest.approx(sum(bce_hand) / 2, rel=1e-6)
    assert kld.item() == pytest.approx(sum(kld_hand) / 2, rel=1e-6)
    assert total.item() == pytest.approx(bce.item() + kld.item(), rel=1e-7)


def test_kl_is_zero_at_the_prior():
    x = torch.rand(4, 784)
    _, _, kld = loss_function(torch.zeros(4, 784), x, torch.zeros(4, 2), torch.zeros(4, 2))
    assert kld.item() == 0.0


def test_loss_is_stable_where_the_sigmoid_saturates():
    # logit 40: the sigmoid rounds to 1.0 in float32, yet the exact BCE for a pixel at 0 is 40 nats
    _, bce, _ = loss_function(torch.full((1, 784), 40.0), torch.zeros(1, 784), torch.zeros(1, 2), torch.zeros(1, 2))
    assert bce.item() == pytest.approx(40.0 * 784, rel=1e-6)


def test_forward_returns_the_logits_of_z_from_q():
    """model(x) decodes z = mu + sigma * eps with eps from the generator it is given, in float32."""
    model, x = VAE(), torch.rand(3, 784)
    logits, mu, logvar = model(x, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(logits, model.decode_logits(mu + torch.exp(0.5 * logvar) * eps))
    again, _, _ = model(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(logits, again)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mu, logvar = model(x)
    assert mu.dtype == logvar.dtype == torch.float32  # the reparameterisation stays in float32 under autocast


def test_no_tensor_carries_an_attribute():
    outputs = VAE()(torch.rand(2, 784))
    assert all(not vars(t) for t in outputs)


def test_checkpoint_round_trip(tmp_path):
    model = CVAE(latent_dim=4)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": "CVAE", "args": {"latent_dim": 4}, "model_state": model.state_dict()}, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, CVAE) and loaded.latent_dim == 4 and not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a VAE-pytorch checkpoint"):
        load_checkpoint(other)


def test_checkpoints_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": "VAE", "model_state": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint(path)


def test_an_unknown_architecture_is_one_line_that_names_the_choices():
    with pytest.raises(ValueError, match=r"^unknown architecture 'typo'; choose one of: original, davidson$"):
        VAE(arch="typo")
    with pytest.raises(ValueError, match="choose one of"):
        CVAE(arch="typo")
    assert list(ARCHS) == ["original", "davidson"]


def test_z_reaches_the_decoder_in_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    model, z = VAE(), torch.randn(64, 2)
    rounded = z.bfloat16().float()
    assert not torch.equal(z, rounded)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(model.decode_logits(z), model.decode_logits(rounded))
        mu, _ = model.encode(torch.rand(4, 784))
    # the encoder's heads run in float32 too: mu is not a bfloat16 value widened
    assert mu.dtype == torch.float32 and not torch.equal(mu, mu.bfloat16().float())
