"""Where the encoder puts the digits:  python latent_dist.py

Encodes the 60,000 training images with the newest VAE and CVAE checkpoints and writes
images/VAE_dist.png and images/CVAE_dist.png, the latent means coloured by digit (their
first two principal components when z has more than 2 dimensions). For a VAE with a
2-d latent space it also writes images/VAE_manifold.png, the decoder's images over a
grid of the latent plane, as in Kingma & Welling's figure 4.
"""
import argparse
import os
import sys

import matplotlib
matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from torchvision.utils import make_grid

from mnist import load_mnist
from models import checkpoint_paths, load_checkpoint
from train import pick_device, writable_dir


@torch.no_grad()
def encode_means(model, images, labels, device, batch_size=5000):
    mus = [model.encode(images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device) if model.conditional else None)[0]
           for i in range(0, len(images), batch_size)]
    return torch.cat(mus).cpu()


def plot_dist(name, path, mu, labels, out):
    if mu.shape[1] == 1:  # one latent: spread the points out by digit
        points, axis_labels = torch.stack([mu[:, 0], labels + 0.6 * torch.rand(len(mu)) - 0.3], 1), ("$\\mu_1$", "digit")
    elif mu.shape[1] == 2:
        points, axis_labels = mu, ("$\\mu_1$", "$\\mu_2$")
    else:  # the plane through the means that keeps most of their variance
        centred = mu - mu.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        share = s.square() / s.square().sum()
        points = centred @ vh[:2].T
        axis_labels = [f"principal component {i + 1} of the {mu.shape[1]}-d means ({share[i]:.0%} of the variance)" for i in range(2)]
    colours = plt.get_cmap("tab10")(labels.numpy())
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.scatter(points[:, 0], points[:, 1], s=2, c=colours, alpha=0.5, linewidths=0, rasterized=True)
    handles = [Line2D([], [], ls="", marker="o", color=plt.get_cmap("tab10")(d), label=str(d)) for d in range(10)]
    ax.legend(handles=handles, title="digit", loc="upper right", framealpha=0.9)
    ax.set(xlabel=axis_labels[0], ylabel=axis_labels[1], title=f"{name}: latent means of the {len(mu):,} training images\n{path}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(out)


@torch.no_grad()
def plot_manifold(model, path, device, out, n=20):
    # grid points at quantiles of the prior N(0, 1): equal probability mass between neighbours
    values = torch.distributions.Normal(0, 1).icdf(torch.linspace(0.05, 0.95, n))
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")  # z2 grows upwards, as on a plot
    images = model.decode(torch.stack([z1.flatten(), z2.flatten()], 1).to(device)).view(-1, 1, 28, 28).cpu()
    fig, ax = plt.subplots(figsize=(9, 9.4))
    ax.imshow(make_grid(images, nrow=n, padding=0)[0], cmap="gray")
    ticks = [28 * i + 14 for i in range(n)]  # the centre of each digit
    ax.set_xticks(ticks, [f"{v:.2f}" for v in values], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [f"{v:.2f}" for v in values.flip(0)], fontsize=8)
    ax.set(xlabel="$z_1$", ylabel="$z_2$", title=f"VAE: the decoder's images at quantiles of N(0, 1) over the latent plane\n{path}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(out)


def main():
    p = argparse.ArgumentParser(description="Plot the latent means of the MNIST training images for the VAE and CVAE checkpoints.")
    p.error = lambda message: sys.exit(f"{p.prog}: error: {message} (see --help)")  # one line, no usage dump
    p.add_argument("--runs-dir", default="runs", help="where train.py writes RUNS_DIR/MODEL/RUN_NAME/ (default: runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run-name", help="use RUNS_DIR/VAE/NAME and RUNS_DIR/CVAE/NAME, whichever exist (default: the newest run of each)")
    which.add_argument("--checkpoint", action="append", metavar="PATH", help="use this checkpoint.pt (or run folder); repeatable")
    p.add_argument("--data-dir", default="data", help="folder that holds MNIST/raw/ (default: data)")
    p.add_argument("--images-dir", default="images", help="where the figures go (default: images)")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda, cuda:N or mps (default: cpu)")
    args = p.parse_args()
    try:
        device = pick_device(args.device)
        models = [(path, load_checkpoint(path, device)) for path in checkpoint_paths(args.runs_dir, args.run_name, args.checkpoint)]
        names = [type(model).__name__ for _, model in models]
        for name in set(names):
            if names.count(name) > 1:
                raise ValueError(f"{names.count(name)} {name} checkpoints given; their figures would overwrite each other: pass one per --images-dir")
        writable_dir(args.images_dir, "--images-dir")
        images, labels = load_mnist(args.data_dir, train=True)
        for path, model in models:
            name = type(model).__name__
            mu = encode_means(model, images, labels, device)
            plot_dist(name, path, mu, labels, os.path.join(args.images_dir, f"{name}_dist.png"))
            if not model.conditional and model.latent_dim == 2:
                plot_manifold(model, path, device, os.path.join(args.images_dir, "VAE_manifold.png"))
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
