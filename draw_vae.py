"""Draw the VAE as a diagram of boxes and arrows:  python draw_vae.py  ->  images/VAE.png

Matplotlib only; no model or data needed.
"""

import os

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Polygon

import cli
import runs

DATA, ENCODER, LATENT, DECODER, LOSS = "#e8e8e8", "#cfe2f3", "#d9ead3", "#fce5cd", "#c0392b"


def box(ax, x0, y0, x1, y1, text, colour, size=13, **kw):
    ax.add_patch(
        FancyBboxPatch(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            boxstyle="round,pad=0.03,rounding_size=0.08",
            facecolor=colour,
            edgecolor="#444444",
            linewidth=1.2,
            **kw,
        )
    )
    ax.text((x0 + x1) / 2, (y0 + y1) / 2, text, ha="center", va="center", fontsize=size)


def trapezoid(ax, x0, x1, left_half, right_half, y, text, colour):
    """A layer stack that narrows (encoder) or widens (decoder) from left to right."""
    corners = [(x0, y - left_half), (x1, y - right_half), (x1, y + right_half), (x0, y + left_half)]
    ax.add_patch(Polygon(corners, facecolor=colour, edgecolor="#444444", linewidth=1.2))
    ax.text((x0 + x1) / 2, y, text, ha="center", va="center", fontsize=13, linespacing=1.6)


def arrow(ax, start, end, colour="#333333", style="-|>", **kw):
    ax.annotate(
        "", xy=end, xytext=start, arrowprops=dict(arrowstyle=style, color=colour, lw=1.5, shrinkA=0, shrinkB=0, **kw)
    )


def draw(path):
    fig = plt.figure(figsize=(12, 4), dpi=100)  # 1200 x 400 pixels
    ax = fig.add_axes([0, 0, 1, 1], xlim=(0, 12), ylim=(0, 4))
    ax.axis("off")
    y = 2.2  # the main row

    box(ax, 0.2, y - 0.5, 1.2, y + 0.5, "$x$\n784 pixels", DATA)
    trapezoid(ax, 1.6, 3.6, 0.95, 0.55, y, "encoder\n$q_\\phi(z\\,|\\,x)$\n784→256→512", ENCODER)
    box(ax, 4.1, y + 0.35, 5.1, y + 0.85, "$\\mu$", LATENT, size=15)
    box(ax, 4.1, y - 0.85, 5.1, y - 0.35, "$\\log\\sigma^2$", LATENT, size=14)
    box(ax, 5.85, y - 0.4, 7.55, y + 0.4, "", LATENT)
    ax.text(6.7, y + 0.13, "$z = \\mu + \\sigma \\odot \\varepsilon$", fontsize=14, ha="center", va="center")
    ax.text(
        6.7,
        y - 0.2,
        "$\\sigma = \\exp(\\frac{1}{2}\\log\\sigma^2)$",
        fontsize=11,
        ha="center",
        va="center",
        color="#555555",
    )
    box(ax, 6.05, 0.45, 7.35, 0.95, "$\\varepsilon \\sim \\mathcal{N}(0, I)$", "white", size=13)
    trapezoid(ax, 8.1, 10.1, 0.55, 0.95, y, "decoder\n$p_\\theta(x\\,|\\,z)$\n2→256→784", DECODER)
    box(ax, 10.6, y - 0.5, 11.8, y + 0.5, "$\\hat{x}$\n784 pixel\nprobabilities", DATA, size=12)

    arrow(ax, (1.25, y), (1.6, y))
    arrow(ax, (3.6, y + 0.3), (4.05, y + 0.6))
    arrow(ax, (3.6, y - 0.3), (4.05, y - 0.6))
    arrow(ax, (5.15, y + 0.6), (5.8, y + 0.15))
    arrow(ax, (5.15, y - 0.6), (5.8, y - 0.15))
    arrow(ax, (6.7, 1.0), (6.7, y - 0.45))
    ax.text(6.8, 1.3, "sampled noise\n(no gradient)", fontsize=10, ha="left", va="center", color="#555555")
    arrow(ax, (7.6, y), (8.1, y))
    ax.text(7.85, y + 0.12, "$z$", fontsize=12, ha="center", va="bottom")
    arrow(ax, (10.1, y), (10.55, y))

    # the two loss terms, in red: reconstruction across the top, KL under the encoder's outputs
    top = 3.55
    arrow(ax, (0.7, y + 0.55), (0.7, top), LOSS, style="-", linestyle="--")
    arrow(ax, (11.2, y + 0.55), (11.2, top), LOSS, style="-", linestyle="--")
    arrow(ax, (0.7, top), (11.2, top), LOSS, style="-", linestyle="--")
    ax.text(
        5.95,
        top,
        " reconstruction loss: $\\mathrm{BCE}(x, \\hat{x})$, summed over the 784 pixels ",
        fontsize=13,
        ha="center",
        va="center",
        color=LOSS,
        bbox=dict(facecolor="white", edgecolor="none"),
    )
    ax.add_patch(
        FancyBboxPatch(
            (3.95, y - 1.0),
            1.3,
            2.0,
            boxstyle="round,pad=0,rounding_size=0.1",
            facecolor="none",
            edgecolor=LOSS,
            linestyle="--",
            linewidth=1.3,
        )
    )
    arrow(ax, (4.6, y - 1.0), (4.6, 0.75), LOSS, style="-", linestyle="--")
    ax.text(
        4.6,
        0.5,
        "$\\mathrm{KL}(\\,q(z\\,|\\,x)\\;\\|\\;\\mathcal{N}(0, I)\\,)$",
        fontsize=13,
        ha="center",
        va="center",
        color=LOSS,
    )
    ax.text(9.95, 0.6, "loss = BCE + KL  (the negative ELBO)", fontsize=13, ha="center", va="center", color=LOSS)

    fig.savefig(path, dpi=100, facecolor="white")
    plt.close(fig)
    print(path)


def main():
    flags = dict(images_dir=("images", str, "where VAE.png goes"))
    args, _ = cli.parse(cli.parser("Draw a diagram of the VAE to IMAGES_DIR/VAE.png.", flags))
    draw(os.path.join(runs.writable_dir(args.images_dir, "--images-dir"), "VAE.png"))


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
