"""Where the encoder puts the digits:  python latent_dist.py  (--help for the flags)

Encodes the 60,000 training images with the default VAE and CVAE runs (runs.py: your newest, else
reference) and writes
images/VAE_dist.png and images/CVAE_dist.png, the latent means coloured by digit (their
first two principal components when z has more than 2 dimensions). For a VAE with a
2-d latent space it also writes
  - images/VAE_manifold.png, the decoder's images over a grid of the latent plane, as in
    Kingma & Welling's figure 4;
  - images/VAE_posterior.png, for 8 test images, the exact posterior p(z|x) (integrated as
    evaluate.py --exact does) as contours, with the encoder's q(z|x) as ellipses over it: four
    of them where the -ELBO is furthest above -log p(x), that is where q is furthest from p(z|x).
A run trained on binarised images (--binarize dynamic) is shown binarised images.
"""

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from torchvision.utils import make_grid

import cli
import mnist
import runs
from likelihood import iwae_bounds, log_prior, model_exact_nll, model_log_likelihood
from mnist import binarize, load_mnist
from models import encode_means, load_model

FLAGS = dict(
    cli.RUN_FLAGS,
    images_dir=("images", str, "where the figures go"),
    posterior_images=(
        200,
        cli.number(int, low=8, low_ok=True),
        "VAE_posterior.png picks its 8 test images among the first this many",
    ),
    seed=(0, int, "seed of the binarisation of the training images, the ELBO's samples and the 1-d scatter's jitter"),
)
ELBO_SAMPLES = 100  # per image, for the -ELBO that picks the images of VAE_posterior.png


def plot_dist(name, path, mu, labels, out, generator):
    labels = labels.cpu()
    if mu.shape[1] == 1:  # one latent: spread the points out by digit
        jitter = 0.6 * torch.rand(len(mu), generator=generator) - 0.3
        points, axis_labels = torch.stack([mu[:, 0], labels + jitter], 1), ("$\\mu_1$", "digit")
    elif mu.shape[1] == 2:
        points, axis_labels = mu, ("$\\mu_1$", "$\\mu_2$")
    else:  # the plane through the means that keeps most of their variance
        centred = mu - mu.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        share = s.square() / s.square().sum()
        points = centred @ vh[:2].T
        axis_labels = [
            f"principal component {i + 1} of the {mu.shape[1]}-d means ({share[i]:.0%} of the variance)"
            for i in range(2)
        ]
    colours = plt.get_cmap("tab10")(labels.numpy())
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.scatter(points[:, 0], points[:, 1], s=2, c=colours, alpha=0.5, linewidths=0, rasterized=True)
    handles = [Line2D([], [], ls="", marker="o", color=plt.get_cmap("tab10")(d), label=str(d)) for d in range(10)]
    ax.legend(handles=handles, title="digit", loc="upper right", framealpha=0.9)
    ax.set(
        xlabel=axis_labels[0],
        ylabel=axis_labels[1],
        title=f"{name}: latent means of the {len(mu):,} training images\n{path}",
    )
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
    ax.set(
        xlabel="$z_1$",
        ylabel="$z_2$",
        title=f"VAE: the decoder's images at quantiles of N(0, 1) over the latent plane\n{path}",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(out)


@torch.inference_mode()
def log_posterior_grid(log_likelihood, i, nll, box, n):
    """log p(z|x_i) = log p(x_i|z) + log p(z) + nll_i on an n x n grid over box (z1_lo, z1_hi, z2_lo, z2_hi)."""
    z1 = torch.linspace(box[0], box[1], n, device=nll.device)
    z2 = torch.linspace(box[2], box[3], n, device=nll.device)
    z = torch.stack(torch.meshgrid(z1, z2, indexing="xy"), -1).view(-1, 2)  # rows follow z2, as imshow and contour want
    index = torch.tensor([i], device=nll.device)
    return z1.cpu(), z2.cpu(), (log_likelihood(z, index)[0] + log_prior(z) + nll).view(n, n).cpu()


def window(z1, z2, log_density, mu, sigma, share=0.999):
    """The box around the grid points that hold `share` of the mass, and q's 2-sigma ellipse, with a margin."""
    flat = log_density.flatten()
    order = flat.argsort(descending=True)
    inside = order[: int((flat[order].softmax(0).cumsum(0) < share).sum()) + 1]
    rows, cols = inside // len(z1), inside % len(z1)
    lo = torch.stack(
        [torch.minimum(z1[cols].min(), mu[0] - 2 * sigma[0]), torch.minimum(z2[rows].min(), mu[1] - 2 * sigma[1])]
    )
    hi = torch.stack(
        [torch.maximum(z1[cols].max(), mu[0] + 2 * sigma[0]), torch.maximum(z2[rows].max(), mu[1] + 2 * sigma[1])]
    )
    pad = 0.15 * (hi - lo).max() + 0.02
    return [lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad]


def mass_levels(log_density, shares=(0.99, 0.9, 0.5)):
    """The densities above which the grid holds each share of the mass (highest-density regions), ascending."""
    values = log_density.flatten().sort(descending=True).values
    cumulative = values.softmax(0).cumsum(0)
    return [values[int((cumulative < s).sum())].exp().item() for s in shares]


@torch.inference_mode()
def plot_posterior(model, path, images, labels, out, generator, count=8):
    """Exact p(z|x) against q(z|x) for `count` test images.

    Half of them where the -ELBO is furthest above -log p(x), the other half the first of the rest.
    """
    nll, info = model_exact_nll(model, images, labels)
    elbo, _ = iwae_bounds(model, images, labels, ELBO_SAMPLES, generator)
    gap = elbo - nll  # KL(q(z|x) || p(z|x)) per image, up to the noise of the samples
    worst = gap.argsort(descending=True)[: count // 2].tolist()
    chosen = worst + [i for i in range(len(images)) if i not in worst][: count - len(worst)]
    mu, logvar = model.encode(images[chosen], labels[chosen] if model.conditional else None)
    sigma = torch.exp(0.5 * logvar)
    log_likelihood = model_log_likelihood(model, images, labels)

    rows = math.ceil(len(chosen) / 2)
    fig, axes = plt.subplots(rows, 4, figsize=(14, 3.4 * rows), gridspec_kw=dict(width_ratios=[1, 2.4, 1, 2.4]))
    for j, (i, ax_image, ax) in enumerate(zip(chosen, axes[:, 0::2].flatten(), axes[:, 1::2].flatten())):
        m, s = mu[j].cpu(), sigma[j].cpu()
        z1, z2, log_density = log_posterior_grid(log_likelihood, i, nll[i].float(), info["box"][i].tolist(), n=80)
        z1, z2, log_density = log_posterior_grid(
            log_likelihood, i, nll[i].float(), window(z1, z2, log_density, m, s), n=160
        )
        levels = mass_levels(log_density)
        ax.contourf(
            z1, z2, log_density.exp(), levels=levels + [log_density.exp().max().item() + 1], cmap="Blues", alpha=0.8
        )
        ax.contour(z1, z2, log_density.exp(), levels=levels, colors="tab:blue", linewidths=0.8)
        for k, style in ((1, "-"), (2, "--")):
            ax.add_patch(
                Ellipse(
                    m.tolist(), 2 * k * s[0].item(), 2 * k * s[1].item(), fill=False, color="tab:red", ls=style, lw=1.2
                )
            )
        ax.plot(*m.tolist(), "+", color="tab:red")
        ax.set_title(f"-ELBO {elbo[i]:.1f}, -log p(x) {nll[i]:.1f}: gap {gap[i]:.1f}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
        ax_image.imshow(images[i].view(28, 28).cpu(), cmap="gray")
        ax_image.set_title(f"test image {i}" + (" (largest gap)" if i in worst else ""), fontsize=9)
        ax_image.axis("off")
    handles = [
        Line2D([], [], color="tab:blue", label="p(z|x): 50%, 90%, 99% of the mass"),
        Line2D([], [], color="tab:red", label="q(z|x): 1 sigma"),
        Line2D([], [], color="tab:red", ls="--", label="q(z|x): 2 sigma"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0.995))
    fig.suptitle(
        f"VAE: the exact posterior against the encoder's q(z|x), {len(images)} test images searched\n{path}",
        y=0.96,
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(out)


def main():
    description = (
        "Plot the latent means of the MNIST training images for the VAE and CVAE checkpoints "
        "(and, for a 2-d VAE, its decoded manifold and exact posteriors)."
    )
    args, _ = cli.parse(cli.parser(description, FLAGS))

    device = cli.pick_device(args.device)
    loaded = [
        (path, *load_model(path, device)) for _, path in runs.choose_runs(args.runs_dir, args.run_name, args.checkpoint)
    ]
    names = [checkpoint["model"] for _, _, checkpoint in loaded]
    for name in set(names):
        if names.count(name) > 1:
            raise cli.UserError(
                f"{names.count(name)} {name} checkpoints given; their figures would overwrite each other: "
                f"pass one per --images-dir"
            )
    runs.writable_dir(args.images_dir, "--images-dir")
    train_x, train_y = load_mnist(args.data_dir, train=True)
    for path, model, checkpoint in loaded:
        name = checkpoint["model"]
        binarized = mnist.binarized(checkpoint["args"].get("binarize"))
        generator = torch.Generator().manual_seed(args.seed)
        images = binarize(train_x, generator) if binarized else train_x
        mu = encode_means(model, images.to(device), train_y.to(device)).cpu()
        plot_dist(name, path, mu, train_y, os.path.join(args.images_dir, f"{name}_dist.png"), generator)
        if not model.conditional and model.latent_dim == 2:
            plot_manifold(model, path, device, os.path.join(args.images_dir, "VAE_manifold.png"))
            test_x, test_y = load_mnist(args.data_dir, train=False, binarized=binarized)
            n = args.posterior_images
            plot_posterior(
                model,
                path,
                test_x[:n].to(device),
                test_y[:n].to(device),
                os.path.join(args.images_dir, "VAE_posterior.png"),
                torch.Generator(device).manual_seed(args.seed),
            )


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
