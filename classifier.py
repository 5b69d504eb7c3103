"""The repo's own MNIST classifier:  python classifier.py  (--help for the flags)

evaluate.py uses it to check that the CVAE's samples show the digit they were
conditioned on. Run as a script it trains the CNN on the 60,000 training images,
prints its accuracy on the 10,000 test images and saves the weights to
data/classifier.pt (about 1 MB, committed with the repo).
"""

import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import utils
from mnist import load_mnist

DEFAULTS = dict(
    epochs=3,
    batch_size=128,
    lr=3e-3,  # peak learning rate of Adam, reached after a short warm-up, then cosine decay to zero
    seed=0,
    device="cpu",  # the committed weights were trained on the CPU
    data_dir="data",
    out="data/classifier.pt",
)
RETRAIN = "run python classifier.py to train it again"
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
    """The trained Classifier, in eval mode; torch.load with weights_only=True, so that loading runs no code.

    A missing or damaged file raises FileNotFoundError or ValueError with a one-line message (utils.main prints it)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no classifier at {path}; pass another path, or run python classifier.py --out {path} to train one"
        ) from None
    except Exception as e:
        raise ValueError(
            f"{path} is not a readable classifier ({type(e).__name__}); it may be truncated or corrupt: {RETRAIN}"
        ) from None
    model = Classifier()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError):
        raise ValueError(f"{path} does not hold this Classifier's weights; {RETRAIN}") from None
    return model.to(device).eval()


@torch.no_grad()
def accuracy(model, images, labels, batch_size=1000):
    """Fraction of the images whose predicted digit is the label."""
    model.eval()
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


def main():
    p = utils.parser("Train the MNIST classifier that evaluate.py uses to check CVAE samples.", DEFAULTS)
    p.add_argument("--epochs", type=utils.number(int), help="epochs to train")
    p.add_argument("--batch-size", type=utils.number(int), help="images per step")
    p.add_argument("--lr", type=utils.number(float), help="peak learning rate of Adam")
    p.add_argument("--seed", type=int, help="random seed")
    utils.add_device_flag(p)
    utils.add_data_flag(p)
    p.add_argument("--out", help="where to save the weights")
    args, _ = utils.parse(p, DEFAULTS)
    device = utils.pick_device(args.device)
    utils.writable_dir(os.path.dirname(args.out) or ".", "--out")
    train_x, train_y = (t.to(device) for t in load_mnist(args.data_dir, train=True))
    test_x, test_y = (t.to(device) for t in load_mnist(args.data_dir, train=False))

    torch.manual_seed(args.seed)
    model = Classifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    if args.epochs * steps_per_epoch < 20:  # the one-cycle schedule needs a warm-up of at least two steps
        raise utils.UserError(
            f"--epochs {args.epochs} at --batch-size {args.batch_size} is only {args.epochs * steps_per_epoch} steps; "
            f"train for 20 or more: lower --batch-size or raise --epochs"
        )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x)).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for step in bar:
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            loss = F.cross_entropy(model(train_x[index]), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        print(
            f"epoch {epoch + 1}/{args.epochs}  test accuracy {accuracy(model, test_x, test_y):.2%}  {time.time() - t0:.0f}s"
        )
    utils.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, args.out)
    print(f"test accuracy {accuracy(model, test_x, test_y):.2%} on {len(test_x)} images; saved to {args.out}")


if __name__ == "__main__":
    utils.main(main)
