"""The CNN that reads MNIST digits: the Classifier module, load_classifier and accuracy.

classifier.py trains it and saves its weights to data/classifier.pt (committed with the repo);
evaluate.py loads them to check that the CVAE's samples show the digit they were conditioned on.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import runs

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
    """The trained Classifier, in eval mode, read by runs.read_weights (torch.load with weights_only=True);
    a missing or damaged file is a one-line error."""
    missing = f"pass another path, or run python classifier.py --out {path} to train one"
    state = runs.read_weights(path, device, "classifier", missing, remedy=RETRAIN)
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
