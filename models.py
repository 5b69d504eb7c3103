"""The VAE and the conditional VAE, their loss, and loading a trained one from its checkpoint.

x is a batch of MNIST images, float in [0, 1], shaped (N, 784) or (N, 1, 28, 28);
y is a batch of int64 labels, shaped (N,), used by the CVAE only.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_SIZE = 784  # 28 x 28
# the networks (--arch): the original's, and the MLPs of Davidson et al. (2018), whose Gaussian VAE the README's
# literature table cites: encoder 784 -> 256 -> 128 and decoder z -> 128 -> 256 -> 784, ReLU throughout
ARCHS = ("original", "davidson")


class Encoder(nn.Module):
    """q(z|x): input -> 256 (LeakyReLU) -> 512 (ReLU) -> mean and log-variance of a diagonal Gaussian
    (arch "davidson": input -> 256 (ReLU) -> 128 (ReLU) -> mean and log-variance)."""

    def __init__(self, in_dim, latent_dim, arch="original"):
        super().__init__()
        width, activation = (512, nn.LeakyReLU) if arch == "original" else (128, nn.ReLU)
        self.body = nn.Sequential(nn.Linear(in_dim, 256), activation(), nn.Linear(256, width), nn.ReLU())
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)

    def forward(self, inputs):
        h = self.body(inputs)
        # the two heads in float32, also under bfloat16 autocast: mu and logvar, so z, keep float32's precision
        with torch.autocast(inputs.device.type, enabled=False):
            h = h.float()
            return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """p(x|z): input -> hidden layers (ReLU), of the widths given -> 784 logits, one Bernoulli per pixel."""

    def __init__(self, in_dim, hidden):
        super().__init__()
        layers = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.body = nn.Sequential(*layers, nn.Linear(in_dim, IMAGE_SIZE))

    def forward(self, inputs):
        first, relu = self.body[0], self.body[1]
        # the input layer in float32, also under bfloat16 autocast, so that z is not rounded to bfloat16 (it is tiny)
        with torch.autocast(inputs.device.type, enabled=False):
            h = relu(first(inputs.float()))
        for layer in self.body[2:]:
            h = layer(h)
        return h


class VAE(nn.Module):
    """x -> Encoder -> (mu, logvar) -> z = mu + sigma * eps -> Decoder -> logits of x."""

    conditional = False

    def __init__(self, latent_dim=2, num_classes=0, decoder_hidden=256, arch="original"):
        super().__init__()
        self.latent_dim, self.num_classes, self.arch = latent_dim, num_classes, arch
        self.encoder = Encoder(IMAGE_SIZE + num_classes, latent_dim, arch)
        self.decoder = Decoder(latent_dim + num_classes, (decoder_hidden,) if arch == "original" else (128, 256))

    def with_label(self, inputs, y):
        """The CVAE appends the one-hot label to the encoder's and the decoder's input."""
        if not self.conditional:
            return inputs
        if y is None:
            raise ValueError("the CVAE needs the labels y as well: call model(x, y), encode(x, y), decode(z, y)")
        return torch.cat([inputs, F.one_hot(y, self.num_classes).to(inputs.dtype)], dim=1)

    def encode(self, x, y=None):
        """(mu, logvar) of q(z|x), each (N, latent_dim)."""
        return self.encoder(self.with_label(x.reshape(len(x), IMAGE_SIZE), y))

    def decode_logits(self, z, y=None):
        return self.decoder(self.with_label(z, y))

    def decode(self, z, y=None):
        """Pixel probabilities (N, 784) of p(x|z)."""
        return torch.sigmoid(self.decode_logits(z, y))

    def forward(self, x, y=None, generator=None):
        """(logits, mu, logvar): the decoder's logits for one z ~ q(z|x) per image, and q's parameters.

        The noise comes from `generator` when one is given (on the images' device), so that it can be repeated.
        """
        mu, logvar = self.encode(x, y)  # float32, also under bfloat16 autocast (Encoder.forward)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)  # carries no gradient
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode_logits(z, y), mu, logvar


class CVAE(VAE):
    conditional = True

    def __init__(self, latent_dim=2, num_classes=10, arch="original"):
        super().__init__(latent_dim, num_classes, decoder_hidden=512, arch=arch)


MODELS = {"VAE": VAE, "CVAE": CVAE}


def softplus(logits):
    """log(1 + exp(logits)) as relu(l) - log(sigmoid(|l|)): relu carries the large part, so it stays accurate
    where the sigmoid saturates, and unlike F.softplus and log1p it is vectorised on CPUs (several times faster)."""
    return torch.relu(logits) - torch.log(torch.sigmoid(logits.abs()))


class BernoulliNLL(torch.autograd.Function):
    """-sum log Bernoulli(x | sigmoid(logits)) = sum softplus(logits) - x . logits, in one pass each way.

    The value of F.binary_cross_entropy_with_logits(reduction="sum") with the gradient
    sigmoid(logits) - x computed directly: a few times faster on CPUs than autograd's way.
    """

    @staticmethod
    def forward(ctx, logits, x):
        ctx.save_for_backward(logits, x)
        return softplus(logits).sum() - torch.dot(x.reshape(-1), logits.reshape(-1))

    @staticmethod
    def backward(ctx, grad):
        logits, x = ctx.saved_tensors
        return (torch.sigmoid(logits) - x) * grad, None


def loss_function(logits, x, mu, logvar):
    """Negative ELBO: (total, bce, kld), each the batch mean of a per-image sum, in nats.

    logits are what model(x) returns first; the BCE is computed from them, which stays
    exact where the sigmoid saturates.
    """
    x = x.reshape(len(x), IMAGE_SIZE)
    bce = BernoulliNLL.apply(logits.float(), x.float())  # under autocast, in float32
    # KL(q(z|x) || N(0, I)) for a diagonal Gaussian q, in closed form
    kld = -0.5 * torch.sum(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp())
    n = len(x)
    return (bce + kld) / n, bce / n, kld / n


@torch.no_grad()
def loss_sums(model, images, labels, generator=None, batch_size=1000):
    """Sums over a data set of the per-image BCE and KLD, as a tensor [bce, kld]; one z sample per image."""
    sums = torch.zeros(2, device=images.device)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        y = labels[i : i + batch_size] if model.conditional else None
        logits, mu, logvar = model(x, y, generator)
        _, bce, kld = loss_function(logits, x, mu, logvar)
        sums += torch.stack([bce, kld]) * len(x)
    return sums


@torch.no_grad()
def encode_means(model, images, labels, batch_size=5000):
    """The means of q(z|x) for a data set, (N, latent_dim), a batch at a time (the VAE ignores the labels)."""
    return torch.cat(
        [
            model.encode(images[i : i + batch_size], labels[i : i + batch_size])[0]
            for i in range(0, len(images), batch_size)
        ]
    )


def read_checkpoint(path, device="cpu"):
    """The dict a checkpoint.pt holds, checked; torch.load with weights_only=True, so that loading runs no code."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no checkpoint at {path}; train one with train.py or train_CVAE.py, or pass another path"
        ) from None
    except Exception as e:
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated or corrupt: "
            f"pass another checkpoint, or train again"
        ) from None
    if isinstance(checkpoint, dict) and "model_state" in checkpoint:  # written before the keys were renamed
        checkpoint["weights"] = checkpoint.pop("model_state")
        if "train_state" in checkpoint:
            checkpoint["trained_weights"] = checkpoint.pop("train_state")
    if not isinstance(checkpoint, dict) or checkpoint.get("model") not in MODELS or "weights" not in checkpoint:
        raise ValueError(
            f"{path} is not a VAE-pytorch checkpoint; pass a checkpoint.pt written by train.py or train_CVAE.py"
        )
    return checkpoint


def model_from(checkpoint, device="cpu", path="the checkpoint"):
    """The model of a checkpoint dict that read_checkpoint returned, with its weights, in eval mode."""
    args = checkpoint["args"]
    model = MODELS[checkpoint["model"]](latent_dim=args["latent_dim"], arch=args.get("arch", "original"))
    try:
        model.load_state_dict(checkpoint["weights"])
    except (RuntimeError, TypeError, KeyError):
        raise ValueError(
            f"{path}: its weights do not fit a {checkpoint['model']} with latent size {model.latent_dim}; "
            f"it is damaged or from other code: pass another checkpoint"
        ) from None
    return model.to(device).eval()


def load_checkpoint(path, device="cpu"):
    """Rebuild the model a checkpoint.pt was written for, with its weights, in eval mode."""
    return model_from(read_checkpoint(path, device), device, path)
