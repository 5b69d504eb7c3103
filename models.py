"""The VAE and the conditional VAE, their loss, and loading a trained one from its checkpoint.

x is a batch of MNIST images, float in [0, 1], shaped (N, 784) or (N, 1, 28, 28);
y is a batch of int64 labels, shaped (N,), used by the CVAE only.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from runs import read_checkpoint

IMAGE_SIZE = 784  # 28 x 28
NUM_CLASSES = 10  # the CVAE's labels
# The networks (--arch), as the widths of their hidden layers: the encoder's, the VAE's decoder's and the CVAE's
# decoder's, and the activation after the encoder's first layer (every other hidden layer has a ReLU).
# original: the original repository's. davidson: the MLPs of Davidson et al. (2018), whose Gaussian VAE the
# README's literature table cites.
ARCHS = {
    "original": dict(encoder=(256, 512), decoder=(256,), cvae_decoder=(512,), first=nn.LeakyReLU),
    "davidson": dict(encoder=(256, 128), decoder=(128, 256), cvae_decoder=(128, 256), first=nn.ReLU),
}


class Encoder(nn.Module):
    """q(z|x): input -> two hidden layers -> mean and log-variance of a diagonal Gaussian, each (N, latent_dim)."""

    def __init__(self, in_dim, latent_dim, widths, first=nn.ReLU):
        super().__init__()
        (w1, w2) = widths
        self.body = nn.Sequential(nn.Linear(in_dim, w1), first(), nn.Linear(w1, w2), nn.ReLU())
        self.mu = nn.Linear(w2, latent_dim)
        self.logvar = nn.Linear(w2, latent_dim)

    def forward(self, inputs):
        h = self.body(inputs)
        # the two heads in float32, also under bfloat16 autocast: mu and logvar, so z, keep float32's precision
        with torch.autocast(inputs.device.type, enabled=False):
            h = h.float()
            return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """p(x|z): input -> hidden layers (ReLU), of the widths given -> 784 logits, one Bernoulli per pixel."""

    def __init__(self, in_dim, widths):
        super().__init__()
        layers = []
        for width in widths:
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
    """x -> encode -> (mu, logvar) -> reparameterize: z = mu + sigma * eps -> decode -> logits of p(x|z)."""

    conditional = False

    def __init__(self, latent_dim=2, arch="original"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
        self.latent_dim, self.arch = latent_dim, arch
        labels = NUM_CLASSES if self.conditional else 0  # the CVAE's one-hot label, appended to x and to z
        widths = ARCHS[arch]
        self.encoder = Encoder(IMAGE_SIZE + labels, latent_dim, widths["encoder"], widths["first"])
        self.decoder = Decoder(latent_dim + labels, widths["cvae_decoder" if self.conditional else "decoder"])

    def with_label(self, inputs, y):
        """The CVAE appends the one-hot label to the encoder's and the decoder's input."""
        if not self.conditional:
            return inputs
        if y is None:
            raise ValueError("the CVAE needs the labels y as well: call model(x, y), encode(x, y), decode(z, y)")
        return torch.cat([inputs, F.one_hot(y, NUM_CLASSES).to(inputs.dtype)], dim=1)

    def encode(self, x, y=None):
        """(mu, logvar) of q(z|x), each (N, latent_dim)."""
        return self.encoder(self.with_label(x.reshape(len(x), IMAGE_SIZE), y))

    def reparameterize(self, mu, logvar, generator=None):
        """z = mu + sigma * eps with eps ~ N(0, I): a sample of q(z|x) through which the gradient reaches mu and
        logvar (eps carries none). The noise comes from `generator` where one is given, so that it repeats."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode_logits(self, z, y=None):
        """The logits of p(x|z), (N, 784)."""
        return self.decoder(self.with_label(z, y))

    def decode(self, z, y=None):
        """Pixel probabilities (N, 784) of p(x|z)."""
        return torch.sigmoid(self.decode_logits(z, y))

    def forward(self, x, y=None, generator=None):
        """(logits, mu, logvar): the decoder's logits for one z ~ q(z|x) per image, and q's parameters."""
        mu, logvar = self.encode(x, y)  # float32, also under bfloat16 autocast (Encoder.forward)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode_logits(z, y), mu, logvar


class CVAE(VAE):
    """The conditional VAE, p(x|y): the one-hot label y goes with x into the encoder and with z into the decoder."""

    conditional = True


MODELS = {"VAE": VAE, "CVAE": CVAE}


def loss_function(logits, x, mu, logvar):
    """The negative ELBO: (loss, bce, kld), each the batch mean of a per-image sum over pixels (or latents), in nats.

    BCE = -log p(x|z), the binary cross-entropy of the pixels x with the decoder's probabilities sigmoid(logits)
    (from the logits, which stays exact where the sigmoid saturates);
    KLD = KL(q(z|x) || N(0, I)) of the diagonal Gaussian q, in closed form.
    """
    x = x.reshape(len(x), IMAGE_SIZE).float()
    mu, logvar = mu.float(), logvar.float()  # under autocast too, in float32
    bce = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
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


def load_model(path, device="cpu"):
    """(model, checkpoint): the model a checkpoint.pt was written for, with its weights, in eval mode, and the
    checkpoint's dict (its flags, epoch and losses)."""
    checkpoint = read_checkpoint(path, device)
    return model_from(checkpoint, device, path), checkpoint


def load_checkpoint(path, device="cpu"):
    """Rebuild the model a checkpoint.pt was written for, with its weights, in eval mode."""
    return load_model(path, device)[0]
