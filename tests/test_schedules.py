"""train.py's learning rate and KLD weight, step by step, against numbers worked out by hand, the ends included."""

import argparse
import math

import pytest

import train


def flags(**changes):
    return argparse.Namespace(**{**train.DEFAULTS, **changes})


def test_warm_up_then_cosine_over_every_step_of_a_small_run():
    """3 epochs of 4 steps, peak 1, a warm-up of 1 epoch: the lr of each of the 12 steps."""
    args = flags(epochs=3, lr=1.0, warmup_epochs=1.0, schedule="cosine")
    lrs = [train.learning_rate(args, epoch, step, 4) for epoch in range(3) for step in range(4)]
    # warm-up: (step + 1) / 4 of the peak; then (1 + cos(pi t / 3)) / 2 at t = 1, 1.25, ..., 2.75 epochs done
    by_hand = [0.25, 0.5, 0.75, 1.0, 0.75, 0.6294095, 0.5, 0.3705905, 0.25, 0.1464466, 0.0669873, 0.0170371]
    assert lrs == pytest.approx(by_hand, abs=1e-7)
    assert lrs[-1] > 0  # the last step still learns; the cosine reaches 0 only after it


def test_constant_and_the_originals_step_decay():
    assert train.learning_rate(flags(schedule="constant", warmup_epochs=0.0, lr=3e-3), 7, 3, 10) == 3e-3
    step_lr = flags(lr=1.0, lr_step_size=10, lr_gamma=0.5)  # StepLR counts optimizer steps across epochs
    assert [train.learning_rate(step_lr, e, s, 8) for e, s in [(0, 0), (1, 1), (1, 2), (2, 3), (2, 4)]] == [
        1.0,  # step 0
        1.0,  # step 9
        0.5,  # step 10: the first decay
        0.5,  # step 19
        0.25,  # step 20
    ]


def test_kl_weight_rises_over_the_warm_up_and_then_stays_at_beta():
    """--beta 2 over a warm-up of 1.5 epochs of 4 steps: 2 * (steps done after this one) / 6, then 2."""
    args = flags(beta=2.0, kl_warmup_epochs=1.5)
    weights = [train.kl_weight(args, epoch, step, 4) for epoch in range(3) for step in range(4)]
    assert weights == pytest.approx([2 / 6, 4 / 6, 1.0, 8 / 6, 10 / 6, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert train.kl_weight(flags(beta=0.25, kl_warmup_epochs=0.0), 0, 0, 4) == 0.25  # no warm-up: beta at once


def test_the_schedule_reads_the_same_at_the_same_point_of_training_whatever_the_batch():
    args = flags(epochs=10, lr=1e-2, warmup_epochs=1.0)
    for steps in (7, 100, 235):  # --batch-size or --limit change the steps per epoch, not the point of training
        assert train.learning_rate(args, 4, 0, steps) == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 0.4)))


def test_each_epoch_draws_its_own_order_and_a_resume_draws_it_again(monkeypatch):
    """The data order of epoch e follows from (seed, e): another epoch or seed, another order; the same, the same."""
    import torch

    from models import VAE

    seeds, randperm = [], torch.randperm

    def recorded(n, generator=None, **kwargs):
        seeds.append(generator.initial_seed())
        return randperm(n, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "randperm", recorded)
    images, labels = torch.rand(64, 784), torch.zeros(64, dtype=torch.long)
    for seed, epoch in [(0, 0), (0, 1), (1, 0), (0, 1)]:
        model = VAE()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train.train_epoch(model, optimizer, None, images, labels, flags(seed=seed, batch_size=32), epoch)
    assert len(set(seeds[:3])) == 3 and seeds[3] == seeds[1]
