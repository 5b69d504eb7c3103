"""Train the repo's own MNIST classifier:  python classifier.py  (--help for the flags)

The CNN (cnn.py) that evaluate.py uses to check that the CVAE's samples show the digit
they were conditioned on. This script trains it on the 60,000 training images, prints its
accuracy on the 10,000 test images and saves the weights to data/classifier.pt (about 1 MB,
committed with the repo), which cnn.load_classifier reads.
"""

import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import runs
from cnn import Classifier, accuracy
from mnist import load_mnist

FLAGS = dict(
    epochs=(3, cli.number(int), "epochs to train"),
    batch_size=(128, cli.number(int), "images per step"),
    lr=(3e-3, cli.number(float), "peak learning rate of Adam, reached after a short warm-up, then cosine decay"),
    seed=(0, int, "random seed"),
    device=("cpu", str, cli.DEVICE_HELP + "; the committed weights were trained on the CPU"),
    data_dir=("data", str, "the folder that holds MNIST/raw/"),
    out=("data/classifier.pt", str, "where to save the weights"),
)


def main():
    args, _ = cli.parse(cli.parser("Train the MNIST classifier that evaluate.py uses to check CVAE samples.", FLAGS))
    device = cli.pick_device(args.device)
    runs.writable_dir(os.path.dirname(args.out) or ".", "--out")
    train_x, train_y = (t.to(device) for t in load_mnist(args.data_dir, train=True))
    test_x, test_y = (t.to(device) for t in load_mnist(args.data_dir, train=False))

    torch.manual_seed(args.seed)
    model = Classifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    if args.epochs * steps_per_epoch < 20:  # the one-cycle schedule needs a warm-up of at least two steps
        raise cli.UserError(
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
        test_accuracy = accuracy(model, test_x, test_y)
        print(f"epoch {epoch + 1}/{args.epochs}  test accuracy {test_accuracy:.2%}  {time.time() - t0:.0f}s")
    runs.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, args.out)
    print(f"test accuracy {accuracy(model, test_x, test_y):.2%} on {len(test_x)} images; saved to {args.out}")


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
