"""The latent plane in the browser:  python explore.py  (--help for the flags)

Writes one self-contained HTML page, by default explore.html, for the default VAE and CVAE
runs (or --run-name, or --checkpoint): the decoders' weights (base64 float32), a JavaScript
forward pass of the decoder, and the latent means of the 10,000 test images, coloured by
digit, as the background of the plane. It loads nothing from the network, so it opens from
a file, offline. Both models need a 2-d latent. The page's template is explore_page.html,
next to this script.

On the page: the pointer over the plane decodes the z under it; a click pins a point and a
second click draws the interpolation between the two; the CVAE's digit buttons change the
label; the dashed circles are the prior's 1, 2 and 3 sigma.

For scripts, the hash picks what the page shows on load:
  explore.html#model=VAE&z=Z1,Z2            (model=CVAE&z=Z1,Z2&digit=D for the CVAE)
  ...&a=Z1,Z2&b=Z1,Z2                        two pinned points and the strip between them
  ...&dump                                   also writes the 784 decoded probabilities,
                                             comma-separated, into <pre id="dump">
so that `chromium --headless --dump-dom 'file:///.../explore.html#model=VAE&z=0.5,-1&dump'`
prints them. The README's images/explore.png is, from the reference runs' page,
  chromium --headless --hide-scrollbars --window-size=1000,620 --screenshot=images/explore.png \
    "file://$PWD/explore.html#model=VAE&z=0.5,-1&a=-2,1.2&b=1.5,-0.8"
(as root, add --no-sandbox).
"""

import base64
import json
import math
import os

import cli
import runs
from mnist import binarized, load_mnist
from models import encode_means, load_model

# The page's template: plain HTML, inline CSS and JavaScript, no external file of any kind. main() writes the models'
# data (JSON) over its PLACEHOLDER; opened as it is, the template says that it is one.
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "explore_page.html")
PLACEHOLDER = "/*DATA*/null"

FLAGS = dict(
    {k: v for k, v in cli.RUN_FLAGS.items() if k != "device"},
    out=("explore.html", str, "the page to write", dict(metavar="FILE")),
)


def b64(tensor, dtype="<f4"):
    """A tensor's values as base64 of little-endian float32 (or another numpy dtype), as the page's arrays read them."""
    return base64.b64encode(tensor.detach().cpu().contiguous().numpy().astype(dtype).tobytes()).decode("ascii")


def page_model(name, path, model, checkpoint, means, labels):
    """What the page holds of one model: its decoder's two layers, and its test codes."""
    first, last = model.decoder.body[0], model.decoder.body[2]  # Linear(in, hidden), ReLU, Linear(hidden, 784)
    # the plane's half-width: nearly every code inside it, and the prior's 3-sigma circle too
    reach = means.abs().max(1).values.quantile(0.999).item()
    return dict(
        name=name,
        path=path,
        epochs=checkpoint["epoch"] + 1 if "epoch" in checkpoint else None,
        conditional=model.conditional,
        inputs=first.in_features,
        hidden=first.out_features,
        w1=b64(first.weight),
        b1=b64(first.bias),
        w2=b64(last.weight),
        b2=b64(last.bias),
        extent=max(3.5, math.ceil(reach * 1.02 * 2) / 2),
        means=b64(means),
        labels=b64(labels, "u1"),
    )


def main():
    description = (
        "Write a self-contained HTML page that decodes the latent plane of the VAE and CVAE "
        "checkpoints in the browser, over their test images' latent means."
    )
    args, _ = cli.parse(cli.parser(description, FLAGS))

    loaded = []
    for _, path in runs.choose_runs(args.runs_dir, args.run_name, args.checkpoint):
        model, checkpoint = load_model(path)
        if model.latent_dim != 2:
            raise cli.UserError(
                f"{path}: the explorer page needs a 2-d latent; this run has latent size {model.latent_dim}"
            )
        if model.arch != "original":
            raise cli.UserError(
                f"{path}: the explorer page runs the original's decoder; this run has --arch {model.arch}"
            )
        loaded.append((checkpoint["model"], path, model, checkpoint))
    names = [name for name, *_ in loaded]
    for name in set(names):
        if names.count(name) > 1:
            raise cli.UserError(
                f"{names.count(name)} {name} checkpoints given; the page holds one of each model: pass one"
            )
    loaded.sort(key=lambda run: list(runs.SCRIPTS).index(run[0]))  # the VAE first: the page opens on it
    runs.writable_dir(os.path.dirname(args.out) or ".", "--out")

    models = []
    for name, path, model, checkpoint in loaded:
        # the test images of the kind the run was trained on, as sample.py and latent_dist.py use them
        images, labels = load_mnist(args.data_dir, train=False, binarized=binarized(checkpoint["args"].get("binarize")))
        models.append(page_model(name, path, model, checkpoint, encode_means(model, images, labels), labels))
    data = json.dumps(dict(models=models)).replace("</", "<\\/")  # nothing in it may close the <script>
    with open(TEMPLATE, encoding="utf-8") as f:
        page = f.read().replace(PLACEHOLDER, data)
    runs.save_atomic(page.encode(), args.out)
    print(args.out)


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
