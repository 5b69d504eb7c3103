"""Pictures from a trained model:  python sample.py COMMAND  (--help for the commands)

  prior        samples decoded from z ~ N(0, I)
  reconstruct  test images and their reconstructions
  interpolate  the images along the straight line between two test images' latent means
  traverse     the decoder's images over a grid of the latent space
  restyle      (CVAE) test images redrawn as each digit 0-9

Each works on the default run of the model it needs (runs.py: your newest, else reference; or
--run-name, or --checkpoint) and
writes one grid of 28 x 28 cells with padding 2 (torchvision.utils.save_image) to --out,
by default images/MODEL_COMMAND.png (MODEL_COMMAND_D.png with --digit D).
"""

import os

import torch
from torchvision.utils import save_image

import cli
import runs
from mnist import binarized, load_mnist
from models import load_model
from pictures import (
    GRID_COLUMNS,
    PADDING,
    interpolation_row,
    prior_grid,
    reconstruction_grid,
    restyle_grid,
    traversal_grid,
)

count, digit, steps = cli.number(int), cli.number(int, low=0, low_ok=True, high=10), cli.number(int, low=2, low_ok=True)
FLAGS = dict(  # every command's
    cli.RUN_FLAGS,
    model=(
        None,
        ["VAE", "CVAE"],
        "which model's run to use (default: the CVAE for restyle and with --digit, else the VAE; a --checkpoint "
        "names its own)",
    ),
    seed=(0, int, "random seed of the noise"),
    out=(
        None,
        str,
        "the picture to write (default: images/MODEL_COMMAND.png, images/MODEL_COMMAND_D.png with --digit D)",
        dict(metavar="FILE"),
    ),
)
COMMANDS = {  # each command's summary, description and own flags
    "prior": (
        "n samples from z ~ N(0, I), 8 per row; a CVAE without --digit: 10 rows of 8, row r digit r, each column one z",
        "Decode samples z ~ N(0, I), 8 per row.",
        dict(
            n=(64, count, "how many samples (not for a CVAE without --digit)", dict(option="-n")),
            digit=(None, digit, "CVAE: draw every sample as this digit"),
        ),
    ),
    "reconstruct": (
        "the first n test images and their reconstructions, in row pairs",
        "The first n test images (a row of 8) and their reconstructions from the latent means (the row below).",
        dict(n=(32, count, "how many test images", dict(option="-n"))),
    ),
    "interpolate": (
        "the images between two test images' latent means, in one row",
        "Test images I and J at the ends of one row, between them the images decoded along the straight line "
        "from I's latent mean to J's.",
        dict(
            between=(
                None,
                cli.number(int, low=0, low_ok=True),
                "the two test images",
                dict(nargs=2, required=True, metavar=("I", "J")),
            ),
            steps=(10, steps, "images decoded from mean I to mean J inclusive"),
            digit=(None, digit, "CVAE: decode as this digit (default: image I's label)"),
        ),
    ),
    "traverse": (
        "the decoder's images over a grid of the latent space",
        "A 2-d latent: steps x steps images over [-range, range]^2, z1 growing to the right, z2 upwards. A larger "
        "latent: a row per dimension, swept over [-range, range] with the others at 0.",
        dict(
            steps=(20, steps, "images per row"),
            range=(3.0, cli.number(float), "the grid spans [-range, range] in each dimension"),
            digit=(0, digit, "CVAE: the digit to draw"),
        ),
    ),
    "restyle": (
        "(CVAE) the first n test images, each redrawn as the digits 0-9",
        "A row per test image: the image, then its latent mean decoded with each of the labels 0-9.",
        dict(n=(8, count, "how many test images", dict(option="-n"))),
    ),
}


def command_parser(prog, **kw):
    """The parser of one command ("sample.py prior", which its errors start with), with its own flags and then
    every command's."""
    return cli.parser(kw.pop("description", None), {**COMMANDS[prog.split()[-1]][2], **FLAGS}, prog=prog, **kw)


def build_parser():
    p = cli.parser(__doc__.split("\n")[0], {})
    commands = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands", parser_class=command_parser
    )
    for name, (summary, description, _) in COMMANDS.items():
        commands.add_parser(name, help=summary, description=description)
    return p


def load(args, given, device):
    """(model, checkpoint, path) of the run the command works on."""
    needs_cvae = "restyle" if args.command == "restyle" else "--digit" if "digit" in given else None
    if needs_cvae and args.model == "VAE":
        raise cli.UserError(f"{needs_cvae} needs a CVAE; drop --model VAE")
    chosen = runs.choose_runs(args.runs_dir, args.run_name, args.checkpoint)
    if args.checkpoint:
        if len(chosen) > 1:
            raise cli.UserError("sample.py draws from one model: pass --checkpoint once")
        path = chosen[0][1]
        model, checkpoint = load_model(path, device)
        if args.model and args.model != checkpoint["model"]:
            raise cli.UserError(f"--model {args.model}, but {path} is a {checkpoint['model']}; drop one of the two")
    else:
        wanted = args.model or ("CVAE" if needs_cvae else "VAE")
        paths = [path for name, path in chosen if name == wanted]
        if not paths:
            where = f"{args.runs_dir}/{wanted}/{args.run_name}" if args.run_name else f"{args.runs_dir}/{wanted}/"
            raise cli.UserError(f"no {wanted} checkpoint in {where}; train one, or pass --model or --checkpoint")
        path = paths[0]
        model, checkpoint = load_model(path, device)
    if needs_cvae and not model.conditional:
        raise cli.UserError(f"{needs_cvae} needs a CVAE, and {path} is a VAE; pass a CVAE checkpoint")
    return model, checkpoint, path


def test_images(args, checkpoint, device):
    """The test images, of the kind the run was trained on (binarised for --binarize dynamic), and their labels."""
    images, labels = load_mnist(args.data_dir, train=False, binarized=binarized(checkpoint["args"].get("binarize")))
    if args.command == "interpolate" and max(args.between) >= len(images):
        raise cli.UserError(
            f"--between {max(args.between)} is outside the test set; use indices 0 to {len(images) - 1}"
        )
    if args.command in ("reconstruct", "restyle") and args.n > len(images):
        raise cli.UserError(f"-n {args.n} is more than the {len(images)} test images")
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
    args, given = cli.parse(build_parser())
    device = cli.pick_device(args.device)
    model, checkpoint, path = load(args, given, device)
    suffix = f"_{args.digit}" if "digit" in given else ""
    out = args.out or os.path.join("images", f"{checkpoint['model']}_{args.command}{suffix}.png")
    runs.writable_dir(os.path.dirname(out) or ".", "--out")
    grid, columns = draw(args, model, checkpoint, device)
    save_image(grid, out, nrow=columns, padding=PADDING)
    print(out)


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
