"""Pictures from a trained model:  python sample.py COMMAND  (--help for the commands)

  prior        samples decoded from z ~ N(0, I)
  reconstruct  test images and their reconstructions
  interpolate  the images along the straight line between two test images' latent means
  traverse     the decoder's images over a grid of the latent space
  restyle      (CVAE) test images redrawn as each digit 0-9

Each works on the newest run of the model it needs (or --run-name, or --checkpoint) and
writes one grid of 28 x 28 cells with padding 2 (torchvision.utils.save_image) to --out,
by default images/MODEL_COMMAND.png (MODEL_COMMAND_D.png with --digit D).
"""

import argparse
import os

import torch
from torchvision.utils import save_image

import utils
from mnist import load_mnist
from pictures import (
    GRID_COLUMNS,
    PADDING,
    interpolation_row,
    prior_grid,
    reconstruction_grid,
    restyle_grid,
    traversal_grid,
)

DEFAULTS = dict(  # every command
    utils.RUN_DEFAULTS,  # run_name None: the newest run of the model
    seed=0,
    model=None,  # None: the CVAE for restyle and with --digit, else the VAE
    out=None,  # None: images/MODEL_COMMAND.png
)
COMMANDS = {  # each command's own flags
    "prior": dict(n=64, digit=None),
    "reconstruct": dict(n=32),
    "interpolate": dict(steps=10, digit=None),
    "traverse": dict(steps=20, range=3.0, digit=0),
    "restyle": dict(n=8),
}
# --- the command line -----------------------------------------------------------------------------


def command_parser(prog, description=None, **kw):
    """The parser of one command: its --help shows its own defaults, and its errors are one line too."""
    p = utils.parser(description, {**DEFAULTS, **COMMANDS[prog.split()[-1]]})
    p.prog = prog  # "sample.py prior", which its error messages start with
    return p


def add_common_flags(c):
    utils.add_run_flags(c)
    c.add_argument(
        "--model",
        choices=["VAE", "CVAE"],
        help="which model's run to use (default: the CVAE for restyle and with --digit, else the VAE; "
        "a --checkpoint names its own)",
    )
    c.add_argument("--seed", type=int, help="random seed of the noise")
    utils.add_device_flag(c)
    utils.add_data_flag(c)
    c.add_argument(
        "--out",
        metavar="FILE",
        help="the picture to write (default: images/MODEL_COMMAND.png, images/MODEL_COMMAND_D.png with --digit D)",
    )


def build_parser():
    p = utils.parser(__doc__.split("\n")[0], DEFAULTS)
    commands = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands", parser_class=command_parser
    )
    count = utils.number(int)
    digit = utils.number(int, low=0, low_ok=True, high=10)
    index = utils.number(int, low=0, low_ok=True)
    steps = utils.number(int, low=2, low_ok=True)

    c = commands.add_parser(
        "prior",
        help="n samples from z ~ N(0, I), 8 per row; a CVAE without --digit: "
        "10 rows of 8, row r digit r, each column one z",
        description="Decode samples z ~ N(0, I), 8 per row.",
    )
    c.add_argument("-n", type=count, help="how many samples (not for a CVAE without --digit)")
    c.add_argument("--digit", type=digit, help="CVAE: draw every sample as this digit")
    add_common_flags(c)

    c = commands.add_parser(
        "reconstruct",
        help="the first n test images and their reconstructions, in row pairs",
        description="The first n test images (a row of 8) and their reconstructions from "
        "the latent means (the row below).",
    )
    c.add_argument("-n", type=count, help="how many test images")
    add_common_flags(c)

    c = commands.add_parser(
        "interpolate",
        help="the images between two test images' latent means, in one row",
        description="Test images I and J at the ends of one row, between them the images "
        "decoded along the straight line from I's latent mean to J's.",
    )
    c.add_argument("--between", nargs=2, type=index, required=True, metavar=("I", "J"), help="the two test images")
    c.add_argument("--steps", type=steps, help="images decoded from mean I to mean J inclusive")
    c.add_argument("--digit", type=digit, help="CVAE: decode as this digit (default: image I's label)")
    add_common_flags(c)

    c = commands.add_parser(
        "traverse",
        help="the decoder's images over a grid of the latent space",
        description="A 2-d latent: steps x steps images over [-range, range]^2, z1 growing "
        "to the right, z2 upwards. A larger latent: a row per dimension, swept "
        "over [-range, range] with the others at 0.",
    )
    c.add_argument("--steps", type=steps, help="images per row")
    c.add_argument("--range", type=utils.number(float), help="the grid spans [-range, range] in each dimension")
    c.add_argument("--digit", type=digit, help="CVAE: the digit to draw")
    add_common_flags(c)

    c = commands.add_parser(
        "restyle",
        help="(CVAE) the first n test images, each redrawn as the digits 0-9",
        description="A row per test image: the image, then its latent mean decoded with each of the labels 0-9.",
    )
    c.add_argument("-n", type=count, help="how many test images")
    add_common_flags(c)
    return p


def load(args, given, device):
    """(model, checkpoint, path) of the run the command works on."""
    needs_cvae = "restyle" if args.command == "restyle" else "--digit" if "digit" in given else None
    if needs_cvae and args.model == "VAE":
        raise utils.UserError(f"{needs_cvae} needs a CVAE; drop --model VAE")
    runs = utils.choose_runs(args.runs_dir, args.run_name, args.checkpoint)
    if args.checkpoint:
        if len(runs) > 1:
            raise utils.UserError("sample.py draws from one model: pass --checkpoint once")
        path = runs[0][1]
        model, checkpoint = utils.load_model(path, device)
        if args.model and args.model != checkpoint["model"]:
            raise utils.UserError(f"--model {args.model}, but {path} is a {checkpoint['model']}; drop one of the two")
    else:
        wanted = args.model or ("CVAE" if needs_cvae else "VAE")
        paths = [path for name, path in runs if name == wanted]
        if not paths:
            where = f"{args.runs_dir}/{wanted}/{args.run_name}" if args.run_name else f"{args.runs_dir}/{wanted}/"
            raise utils.UserError(f"no {wanted} checkpoint in {where}; train one, or pass --model or --checkpoint")
        path = paths[0]
        model, checkpoint = utils.load_model(path, device)
    if needs_cvae and not model.conditional:
        raise utils.UserError(f"{needs_cvae} needs a CVAE, and {path} is a VAE; pass a CVAE checkpoint")
    return model, checkpoint, path


def test_images(args, checkpoint, device):
    """The test images, of the kind the run was trained on (binarised for --binarize dynamic), and their labels."""
    binarized = utils.binarized(checkpoint["args"].get("binarize"))
    images, labels = load_mnist(args.data_dir, train=False, binarized=binarized)
    if args.command == "interpolate" and max(args.between) >= len(images):
        raise utils.UserError(
            f"--between {max(args.between)} is outside the test set; use indices 0 to {len(images) - 1}"
        )
    if args.command in ("reconstruct", "restyle") and args.n > len(images):
        raise utils.UserError(f"-n {args.n} is more than the {len(images)} test images")
    return images.to(device), labels.to(device)


def draw(args, model, checkpoint, device):
    """(grid, columns) of the command."""
    if args.command == "prior":
        digit = args.digit if model.conditional else None
        n = GRID_COLUMNS if model.conditional and digit is None else args.n
        generator = torch.Generator(device).manual_seed(args.seed)
        noise = torch.randn(n, model.latent_dim, generator=generator, device=device)
        return prior_grid(model, noise, digit), GRID_COLUMNS
    if args.command == "reconstruct":
        images, labels = test_images(args, checkpoint, device)
        return reconstruction_grid(model, images[: args.n], labels[: args.n]), GRID_COLUMNS
    if args.command == "interpolate":
        i, j = args.between
        images, labels = test_images(args, checkpoint, device)
        digit = args.digit if args.digit is not None else labels[i].item()
        return interpolation_row(model, images[i], images[j], labels[[i, j]], digit, args.steps), args.steps + 2
    if args.command == "traverse":
        return traversal_grid(model, args.steps, args.range, args.digit, device), args.steps
    images, labels = test_images(args, checkpoint, device)
    return restyle_grid(model, images[: args.n], labels[: args.n]), 11


def main():
    args, given = utils.parse(build_parser(), DEFAULTS)
    args = argparse.Namespace(**{**COMMANDS[args.command], **vars(args)})
    device = utils.pick_device(args.device)
    model, checkpoint, path = load(args, given, device)
    suffix = f"_{args.digit}" if "digit" in given else ""
    out = args.out or os.path.join("images", f"{checkpoint['model']}_{args.command}{suffix}.png")
    utils.writable_dir(os.path.dirname(out) or ".", "--out")
    grid, columns = draw(args, model, checkpoint, device)
    save_image(grid, out, nrow=columns, padding=PADDING)
    print(out)


if __name__ == "__main__":
    utils.main(main)
