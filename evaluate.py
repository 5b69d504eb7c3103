"""Measure trained models on the 10,000 MNIST test images:  python evaluate.py  (--help for the flags)

By default it evaluates the newest run of each of the VAE and the CVAE under runs/.
For each model it prints, in nats per image:
  - the test -ELBO with its BCE and KLD parts, with the same noise as train.py's
    logged test/loss, which is printed beside it (they agree for a run trained in
    one process on the same kind of device);
  - the importance-weighted bound on -log p(x) of Burda et al. (IWAE) with --k
    samples per image: never above the -ELBO on average, and tighter as k grows;
  - for a CVAE, the fraction of its samples (--n per digit) that the repo's
    classifier (classifier.py) labels as the digit they were conditioned on.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch.distributions import Normal
from tqdm import tqdm

from classifier import accuracy, load_classifier
from mnist import load_mnist
from models import checkpoint_paths, loss_sums, model_from, read_checkpoint
from train import number, pick_device

DEFAULTS = dict(
    k=1000,  # importance samples per image for the IWAE bound
    n=1000,  # CVAE samples per digit for the label agreement
    seed=0,
    device="cpu",
    data_dir="data",
    runs_dir="runs",
    classifier="data/classifier.pt",
)
IMAGES_PER_CHUNK = 100  # the IWAE loop decodes at most this many images x SAMPLES_PER_CHUNK samples at once
SAMPLES_PER_CHUNK = 100  # (10,000 rows of 784 logits: about 30 MB)


@torch.inference_mode()
def iwae_nll(model, images, labels, k, desc):
    """Mean over the images of -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x)."""
    total = 0.0
    prior = Normal(0.0, 1.0)
    for i in tqdm(range(0, len(images), IMAGES_PER_CHUNK), desc=desc, leave=False):
        x = images[i:i + IMAGES_PER_CHUNK]
        y = labels[i:i + IMAGES_PER_CHUNK] if model.conditional else None
        mu, logvar = model.encode(x, y)
        q = Normal(mu, torch.exp(0.5 * logvar))
        log_w = []  # (samples, images) chunks of log p(x|z) + log p(z) - log q(z|x)
        for s in range(0, k, SAMPLES_PER_CHUNK):
            m = min(SAMPLES_PER_CHUNK, k - s)
            z = q.sample((m,))  # (m, images, latent_dim)
            logits = model.decode_logits(z.flatten(0, 1), None if y is None else y.repeat(m)).view(m, len(x), -1)
            log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
            log_w.append(log_px_z + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
        log_px = torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)
        total -= log_px.sum().item()
    return total / len(images)


@torch.inference_mode()
def label_agreement(model, classifier, n, device):
    """Per digit, the fraction of n samples decoded from z ~ N(0, I) with that digit as label that the classifier calls that digit."""
    fractions = []
    for digit in range(10):
        z = torch.randn(n, model.latent_dim, device=device)
        y = torch.full((n,), digit, device=device)
        fractions.append((classifier(model.decode(z, y)).argmax(1) == digit).sum().item() / n)
    return fractions


def evaluate(args):
    device = pick_device(args.device)
    paths = checkpoint_paths(args.runs_dir, args.run_name, args.checkpoint)
    checkpoints = [(path, read_checkpoint(path, device)) for path in paths]
    loaded = [(path, checkpoint, model_from(checkpoint, device)) for path, checkpoint in checkpoints]
    test_x, test_y = load_mnist(args.data_dir, train=False)
    test_x, test_y = test_x.to(device), test_y.to(device)
    classifier = None
    if any(model.conditional for _, _, model in loaded):  # before any long computation: fail early if it is missing
        classifier = load_classifier(args.classifier, device)
        classifier_accuracy = accuracy(classifier, test_x, test_y)

    results = {}
    for path, checkpoint, model in loaded:
        name = checkpoint["model"]
        t0 = time.time()
        torch.manual_seed(checkpoint["args"]["seed"])  # as train.py does before its test loss
        bce, kld = (loss_sums(model, test_x, test_y) / len(test_x)).tolist()
        torch.manual_seed(args.seed)
        result = {"checkpoint": path, "epochs": checkpoint["epoch"] + 1, "test_loss": bce + kld, "test_bce": bce, "test_kld": kld,
                  "logged_test_loss": checkpoint["test_loss"], "iwae_nll": iwae_nll(model, test_x, test_y, args.k, f"{name} IWAE k={args.k}"),
                  "k": args.k}
        if model.conditional:
            per_digit = label_agreement(model, classifier, args.n, device)
            result.update(label_agreement=sum(per_digit) / 10, label_agreement_per_digit=per_digit, n=args.n,
                          classifier_test_accuracy=classifier_accuracy)
        result["seconds"] = time.time() - t0
        results[name if name not in results else path] = result  # a second checkpoint of the same model goes under its path
        if not args.json:
            report(name, result)
    if args.json:
        print(json.dumps(results, indent=2))


def report(name, r):
    print(f"{name}  {r['checkpoint']}  ({r['epochs']} epochs)")
    print(f"  test -ELBO       {r['test_loss']:8.2f} nats/image  (bce {r['test_bce']:.2f} + kld {r['test_kld']:.2f}); logged {r['logged_test_loss']:.2f}")
    print(f"  IWAE -log p(x)   {r['iwae_nll']:8.2f} nats/image  (k={r['k']}; an upper bound that tightens as k grows)")
    if "label_agreement" in r:
        digits = " ".join(f"{d}:{f:.0%}" for d, f in enumerate(r["label_agreement_per_digit"]))
        print(f"  label agreement  {r['label_agreement']:8.2%} of {10 * r['n']} samples  ({digits}); "
              f"the classifier's test accuracy {r['classifier_test_accuracy']:.2%}")
    print(f"  {r['seconds']:.0f}s")


def main():
    p = argparse.ArgumentParser(description="Measure trained VAE and CVAE checkpoints on the MNIST test images.")
    p.error = lambda message: sys.exit(f"{p.prog}: error: {message} (see --help)")  # one line, no usage dump
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run-name", help="evaluate RUNS_DIR/VAE/RUN_NAME and RUNS_DIR/CVAE/RUN_NAME, whichever exist (default: the newest run of each)")
    which.add_argument("--checkpoint", action="append", metavar="PATH", help="evaluate this checkpoint.pt; repeat for several")
    p.add_argument("--runs-dir", default=DEFAULTS["runs_dir"], help="folder of the runs (default: %(default)s)")
    p.add_argument("--k", type=number(int), default=DEFAULTS["k"], help="importance samples per image for the IWAE bound (default: %(default)s)")
    p.add_argument("--n", type=number(int), default=DEFAULTS["n"], help="CVAE samples per digit classified (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the IWAE and sampling noise (default: %(default)s)")
    p.add_argument("--device", default=DEFAULTS["device"], help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    p.add_argument("--data-dir", default=DEFAULTS["data_dir"], help="folder that holds MNIST/raw/ (default: %(default)s)")
    p.add_argument("--classifier", default=DEFAULTS["classifier"], help="weights of classifier.py's CNN (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object, and nothing else, on stdout")
    args = p.parse_args()
    try:
        evaluate(args)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
