"""Measure trained models on the MNIST test images:  python evaluate.py  (--help for the flags)

By default it evaluates the default run (runs.py: your newest, else reference) of the VAE and the CVAE.
For each model it prints, in nats per image (the mean over the images):
  - the test -ELBO with its BCE and KLD parts, with the same noise as train.py's
    logged test/loss, which is printed beside it (they agree for a run trained in
    one process on the same kind of device);
  - the importance-weighted bound on -log p(x) of Burda et al. (IWAE) with --k
    samples per image: never above the -ELBO on average, and tighter as k grows;
  - the active units of Burda et al.: the latent dimensions whose E_q(z|x)[z_j] varies
    over the test images (variance above 0.01);
  - with --exact (2-d latents only), -log p(x) itself (for a CVAE -log p(x|y)),
    integrated numerically over the latent plane, and the gap of each bound to it:
    the -ELBO's gap is the mean KL(q(z|x) || p(z|x));
  - for a CVAE, the fraction of its samples (--n per digit) that the repo's classifier
    (cnn.py, trained by classifier.py) labels as the digit they were conditioned on.
A run trained on binarised images (--binarize dynamic) is measured on the binarised test set.
"""

import json
import time

import torch

import cli
import mnist
import runs
from cnn import accuracy, load_classifier
from likelihood import MAX_RADIUS, iwae_bounds, model_exact_nll
from mnist import load_mnist
from models import encode_means, load_model, loss_sums

FLAGS = dict(
    cli.RUN_FLAGS,
    k=(
        [1000],
        cli.number(int),
        "importance samples per image for the IWAE bound; several give a bound each (--k 500 5000)",
        dict(nargs="+"),
    ),
    n=(1000, cli.number(int), "CVAE samples per digit classified"),
    limit=(None, cli.number(int), "use the first LIMIT test images only (default: all 10,000)"),
    exact=(False, "switch", "also -log p(x) by integration over the latent plane (2-d latents only)"),
    seed=(0, int, "seed of the IWAE and sampling noise"),
    classifier=("data/classifier.pt", str, "weights of classifier.py's CNN"),
    json=(False, "switch", "print the figures as one JSON object, and nothing else, on stdout"),
)


# --- the latent space ----------------------------------------------------------------------------


def active_units(means, threshold=0.01):
    """The number of active latent dimensions (Burda et al. 2016): those j where Var_x(E_q(z|x)[z_j]) > threshold.

    means: (images, latent_dim), the means of q(z|x) (of q(z|x,y) for a CVAE); the variance is that of
    these images (divided by their number), so that one image gives 0 rather than nan.
    """
    return int((means.double().var(0, correction=0) > threshold).sum())


# --- the CVAE's samples, checked by the classifier -------------------------------------------------


@torch.inference_mode()
def label_agreement(model, classifier, n, generator):
    """Per digit, the fraction of n samples from z ~ N(0, I) with that digit as label that the classifier reads so."""
    fractions = []
    device = generator.device
    for digit in range(10):
        z = torch.randn(n, model.latent_dim, generator=generator, device=device)
        y = torch.full((n,), digit, device=device)
        fractions.append((classifier(model.decode(z, y)).argmax(1) == digit).sum().item() / n)
    return fractions


# --- the script --------------------------------------------------------------------------------


def load_test_images(data_dir, binarized, limit, device):
    images, labels = load_mnist(data_dir, train=False, binarized=binarized)
    return images[:limit].to(device), labels[:limit].to(device)


def evaluate_one(path, model, checkpoint, args, device, classifier):
    binarized = mnist.binarized(checkpoint["args"].get("binarize"))
    x, y = load_test_images(args.data_dir, binarized, args.limit, device)
    t0 = time.time()
    generator = torch.Generator(device).manual_seed(checkpoint["args"]["seed"])  # the noise of train.py's test loss
    bce, kld = (loss_sums(model, x, y, generator) / len(x)).tolist()
    # each measurement draws from its own generator, so that one does not change with another's --k or --limit
    iwae = {}
    for k in args.k:
        noise = torch.Generator(device).manual_seed(args.seed)
        iwae[k] = iwae_bounds(model, x, y, k, noise, f"{checkpoint['model']} IWAE k={k}")[1].mean().item()
    r = {
        "checkpoint": path,
        "epochs": checkpoint["epoch"] + 1,
        "binarized": binarized,
        "n_images": len(x),
        "test_loss": bce + kld,
        "test_bce": bce,
        "test_kld": kld,
        "logged_test_loss": checkpoint["test_loss"],
        "iwae_nll": iwae[args.k[-1]],  # of the last --k
        "k": args.k[-1],
        "iwae": {str(k): value for k, value in iwae.items()},  # of every --k
        "latent_dim": model.latent_dim,
        "arch": model.arch,
        "active_units": active_units(encode_means(model, x, y)),
    }
    if args.exact and model.latent_dim == 2:
        t1 = time.time()
        nll, info = model_exact_nll(model, x, y)
        r.update(
            exact_nll=nll.mean().item(),
            elbo_gap=r["test_loss"] - nll.mean().item(),
            iwae_gap=r["iwae_nll"] - nll.mean().item(),
            exact_seconds=time.time() - t1,
            exact_unconverged=int((~info["converged"]).sum()),
            exact_max_radius=info["radius"].max().item(),
        )
    if model.conditional:
        per_digit = label_agreement(model, classifier, args.n, torch.Generator(device).manual_seed(args.seed))
        r.update(
            label_agreement=sum(per_digit) / 10,
            label_agreement_per_digit=per_digit,
            n=args.n,
            classifier_test_accuracy=accuracy(classifier, x, y),
        )
    r["seconds"] = time.time() - t0
    return r


def report(name, r):
    images = f"the first {r['n_images']:,} " if r["n_images"] < 10000 else ""
    images += "binarised " if r["binarized"] else ""
    print(f"{name}  {r['checkpoint']}  ({r['epochs']} epochs; {images}test images)")
    print(
        f"  {'test -ELBO':17} {r['test_loss']:8.2f} nats/image  (bce {r['test_bce']:.2f} + kld {r['test_kld']:.2f}); "
        f"logged {r['logged_test_loss']:.2f} (on all 10,000)"
    )
    for k, value in r["iwae"].items():
        print(f"  {'IWAE bound':17} {value:8.2f} nats/image  (k={k}; an upper bound on -log p(x), tighter as k grows)")
    given = "x,y" if "label_agreement" in r else "x"
    print(
        f"  {'active units':17} {r['active_units']:5d} of {r['latent_dim']}  "
        f"(variance of E[z|{given}] over the test images > 0.01)"
    )
    if "exact_nll" in r:
        what = "exact -log p(x|y)" if "label_agreement" in r else "exact -log p(x)"
        print(
            f"  {what:17} {r['exact_nll']:8.2f} nats/image  "
            f"(integrated over the latent plane in {r['exact_seconds']:.0f}s)"
        )
        print(
            f"  {'gaps to it':17} -ELBO {r['elbo_gap']:.2f} (the mean KL(q(z|x) || p(z|x))), IWAE {r['iwae_gap']:.2f}"
        )
        if r["exact_unconverged"]:
            print(
                f"  warning: for {r['exact_unconverged']} images the integral did not converge (it still moved by "
                f"0.01 nat at the finest grid, or -log p(x) is too large for |z| < {MAX_RADIUS:.0f})"
            )
    if "label_agreement" in r:
        digits = " ".join(f"{d}:{f:.0%}" for d, f in enumerate(r["label_agreement_per_digit"]))
        print(
            f"  {'label agreement':17} {r['label_agreement']:8.2%} of {10 * r['n']} samples  ({digits}); "
            f"the classifier's test accuracy {r['classifier_test_accuracy']:.2%}"
        )
    print(f"  {r['seconds']:.0f}s")


def main():
    args, _ = cli.parse(cli.parser("Measure trained VAE and CVAE checkpoints on the MNIST test images.", FLAGS))

    device = cli.pick_device(args.device)
    loaded = [
        (path, *load_model(path, device)) for _, path in runs.choose_runs(args.runs_dir, args.run_name, args.checkpoint)
    ]
    if args.exact and all(
        model.latent_dim != 2 for _, model, _ in loaded
    ):  # else the exact value is of the 2-d ones only
        path, model, _ = loaded[0]
        raise cli.UserError(
            f"--exact integrates over a 2-d latent plane; {path} has latent size {model.latent_dim}: "
            f"drop --exact for it"
        )
    classifier = None
    if any(model.conditional for _, model, _ in loaded):  # before any long computation: fail early if it is missing
        classifier = load_classifier(args.classifier, device)

    results = {}
    for path, model, checkpoint in loaded:
        name = checkpoint["model"]
        r = evaluate_one(path, model, checkpoint, args, device, classifier)
        results[name if name not in results else path] = r  # a second checkpoint of the same model goes under its path
        if not args.json:
            report(name, r)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
