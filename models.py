"""The VAE and the conditional VAE, their loss, and checkpoint loading.

x is a batch of MNIST images, float in [0, 1], shaped (N, 784) or (N, 1, 28, 28);
y is a batch of int64 labels, shaped (N,), used by the CVAE only.
"""
import glob
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_SIZE = 784  # 28 x 28


class Encoder(nn.Module):
    """q(z|x): input -> 256 (LeakyReLU) -> 512 (ReLU) -> mean and log-variance of a diagonal Gaussian."""

    def __init__(self, in_dim, latent_dim):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, 256), nn.LeakyReLU(), nn.Linear(256, 512), nn.ReLU())
        self.mu = nn.Linear(512, latent_dim)
        self.logvar = nn.Linear(512, latent_dim)

    def forward(self, inputs):
        h = self.body(inputs)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """p(x|z): input -> hidden (ReLU) -> 784 logits, one Bernoulli per pixel."""

    def __init__(self, in_dim, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, IMAGE_SIZE))

    def forward(self, inputs):
        return self.body(inputs)


class VAE(nn.Module):
    """x -> Encoder -> (mu, logvar) -> z = mu + sigma * eps -> Decoder -> x_hat."""

    conditional = False

    def __init__(self, latent_dim=2, num_classes=0, decoder_hidden=256):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.encoder = Encoder(IMAGE_SIZE + num_classes, latent_dim)
        self.decoder = Decoder(latent_dim + num_classes, decoder_hidden)

    def with_label(self, inputs, y):
        """The CVAE appends the one-hot label to the encoder's and the decoder's input."""
        if not self.conditional:
            return inputs
        if y is None:
            raise ValueError("the CVAE needs the labels y as well: call model(x, y), encode(x, y), decode(z, y)")
        return torch.cat([inputs, F.one_hot(y, self.num_classes).to(inputs.dtype)], dim=1)

    def encode(self, x, y=None):
        return self.encoder(self.with_label(x.reshape(len(x), IMAGE_SIZE), y))

    def decode_logits(self, z, y=None):
        return self.decoder(self.with_label(z, y))

    def decode(self, z, y=None):
        return torch.sigmoid(self.decode_logits(z, y))

    def forward(self, x, y=None):
        mu, logvar = self.encode(x, y)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterisation: the noise carries no gradient
        logits = self.decode_logits(z, y)
        reconstruction = torch.sigmoid(logits)
        reconstruction.logits = logits  # kept for loss_function, which computes the BCE stably from them
        return reconstruction, mu, logvar


class CVAE(VAE):
    conditional = True

    def __init__(self, latent_dim=2, num_classes=10):
        super().__init__(latent_dim, num_classes, decoder_hidden=512)


def loss_function(recon_x, x, mu, logvar):
    """Negative ELBO: (total, bce, kld), each the batch mean of a per-image sum, in nats.

    recon_x is what model(x) returns. Its BCE is computed from the decoder's
    logits when they are attached (as model(x) does), which stays exact where
    the sigmoid saturates; a plain probability tensor works too.
    """
    x = x.reshape(len(x), IMAGE_SIZE)
    mu, logvar = mu.float(), logvar.float()  # under bfloat16 autocast, sum in float32
    logits = getattr(recon_x, "logits", None)
    if logits is not None:
        bce = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum")
    else:
        bce = F.binary_cross_entropy(recon_x.reshape(len(x), IMAGE_SIZE).float(), x, reduction="sum")
    # KL(q(z|x) || N(0, I)) for a diagonal Gaussian q, in closed form
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    n = len(x)
    return (bce + kld) / n, bce / n, kld / n


@torch.no_grad()
def loss_sums(model, images, labels=None, batch_size=1000):
    """Sums over a data set of the per-image BCE and KLD, as a tensor [bce, kld]; one z sample per image."""
    model.eval()
    sums = torch.zeros(2, device=images.device)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        y = labels[i:i + batch_size] if model.conditional else None
        recon, mu, logvar = model(x, y)
        _, bce, kld = loss_function(recon, x, mu, logvar)
        sums += torch.stack([bce, kld]) * len(x)
    return sums


MODELS = {"VAE": VAE, "CVAE": CVAE}


def load_weights(path, device, what, remedy):
    """torch.load with weights_only=True, so that loading runs no code; one-line errors name `what` and the remedy."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}; {remedy}") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable {what} ({type(e).__name__}); it may be truncated or corrupt: {remedy}") from None


def read_checkpoint(path, device="cpu"):
    """The dict a checkpoint.pt holds, checked."""
    checkpoint = load_weights(path, device, "checkpoint", "train one with train.py or train_CVAE.py, or pass another path")
    if not isinstance(checkpoint, dict) or checkpoint.get("model") not in MODELS or "model_state" not in checkpoint:
        raise ValueError(f"{path} is not a VAE-pytorch checkpoint; pass a checkpoint.pt written by train.py or train_CVAE.py")
    return checkpoint


def load_checkpoint(path, device="cpu"):
    """Rebuild the model a checkpoint.pt was written for, with its weights, in eval mode."""
    return model_from(read_checkpoint(path, device), device)


def model_from(checkpoint, device="cpu"):
    """The model of a checkpoint dict that read_checkpoint returned, with its weights, in eval mode."""
    model = MODELS[checkpoint["model"]](latent_dim=checkpoint["args"]["latent_dim"])
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()


def newest_run(runs_dir, model_name, filename="checkpoint.pt"):
    """The run folder RUNS_DIR/MODEL_NAME/* whose file matching `filename` changed last, or None."""
    paths = glob.glob(os.path.join(runs_dir, model_name, "*", filename))
    return os.path.dirname(max(paths, key=os.path.getmtime)) if paths else None


def checkpoint_paths(runs_dir="runs", run_name=None, paths=None):
    """The checkpoints a script works on: `paths` (a run folder will do), else RUNS_DIR/{VAE,CVAE}/RUN_NAME,
    else the newest run of each model."""
    if paths:
        return [os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path for path in paths]
    if run_name:
        found = [os.path.join(runs_dir, name, run_name, "checkpoint.pt") for name in MODELS]
        found = [path for path in found if os.path.exists(path)]
        if not found:
            raise FileNotFoundError(f"no run named {run_name} under {runs_dir}/VAE/ or {runs_dir}/CVAE/; check --run-name and --runs-dir")
        return found
    found = [os.path.join(run, "checkpoint.pt") for run in (newest_run(runs_dir, name) for name in MODELS) if run]
    if not found:
        raise FileNotFoundError(f"no checkpoint under {runs_dir}/VAE/ or {runs_dir}/CVAE/; train one with python train.py (or pass --checkpoint)")
    return found
