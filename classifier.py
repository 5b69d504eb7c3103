"""The repo's own MNIST classifier:  python classifier.py  (--help for the flags)

evaluate.py uses it to check that the CVAE's samples show the digit they were
conditioned on. Run as a script it trains the CNN on the 60,000 training images,
prints its accuracy on the 10,000 test images and saves the weights to
data/classifier.pt (about 1 MB, committed with the repo).
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from mnist import load_mnist
from models import load_weights
from train import number, save_atomic

DEFAULTS = dict(
    epochs=3,
    batch_size=128,
    lr=3e-3,  # peak learning rate of Adam, reached after a short warm-up, then cosine decay to zero
    seed=0,
    data_dir="data",
    out="data/classifier.pt",
)
MEAN, STD = 0.1307, 0.3081  # of the MNIST training pixels


class Classifier(nn.Module):
    """conv 32 -> pool -> conv 64 -> pool -> fc 128 -> 10 logits; takes images in [0, 1], (N, 784) or (N, 1, 28, 28)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)  # 28 -> 26, pooled to 13
        self.conv2 = nn.Conv2d(32, 64, 3)  # 13 -> 11, pooled to 5
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, 10)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        x = (x.reshape(-1, 1, 28, 28) - MEAN) / STD
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def load_classifier(path="data/classifier.pt", device="cpu"):
    """The trained Classifier, in eval mode."""
    state = load_weights(path, device, "classifier", "run python classifier.py to train it")
    model = Classifier()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise ValueError(f"{path} does not hold this Classifier's weights; run python classifier.py to train it again") from None
    return model.to(device).eval()


@torch.no_grad()
def accuracy(model, images, labels, batch_size=1000):
    """Fraction of the images whose predicted digit is the label."""
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def main():
    p = argparse.ArgumentParser(description="Train the MNIST classifier that evaluate.py uses to check CVAE samples.")
    p.error = lambda message: sys.exit(f"{p.prog}: error: {message} (see --help)")
    p.add_argument("--epochs", type=number(int), default=DEFAULTS["epochs"], help="epochs to train (default: %(default)s)")
    p.add_argument("--batch-size", type=number(int), default=DEFAULTS["batch_size"], help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=number(float), default=DEFAULTS["lr"], help="peak learning rate of Adam (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (default: %(default)s)")
    p.add_argument("--data-dir", default=DEFAULTS["data_dir"], help="folder that holds MNIST/raw/ (default: %(default)s)")
    p.add_argument("--out", default=DEFAULTS["out"], help="where to save the weights (default: %(default)s)")
    args = p.parse_args()
    try:
        train_x, train_y = load_mnist(args.data_dir, train=True)
        test_x, test_y = load_mnist(args.data_dir, train=False)
        if os.path.dirname(args.out):
            os.makedirs(os.path.dirname(args.out), exist_ok=True)

        torch.manual_seed(args.seed)
        model = Classifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1)
        t0 = time.time()
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(len(train_x))
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
            for step in bar:
                index = order[step * args.batch_size:(step + 1) * args.batch_size]
                loss = F.cross_entropy(model(train_x[index]), train_y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            print(f"epoch {epoch + 1}/{args.epochs}  test accuracy {accuracy(model, test_x, test_y):.2%}  {time.time() - t0:.0f}s")
        save_atomic(model.state_dict(), args.out)
        print(f"test accuracy {accuracy(model, test_x, test_y):.2%} on {len(test_x)} images; saved to {args.out}")
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
