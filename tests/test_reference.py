"""The committed runs give the figures that the README reports, at the precision it prints them."""

import json
import math
import os
import re
import statistics

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnn import load_classifier
from mnist import load_mnist
from models import load_model, loss_sums
from runs import read_checkpoint

RUNS = [("VAE", "reference"), ("CVAE", "reference"), ("VAE", "binarized"), ("CVAE", "binarized")]
ROW = re.compile(
    r"^\| (VAE|CVAE) \| [^|]+ \| `runs/(VAE|CVAE)/(\w+)` \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) ± ([\d.]+) \|",
    re.MULTILINE,
)


def readme():
    return open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def readme_rows():
    """{(model, run): (−ELBO, IWAE, exact, seed mean, seed sd)} from the README's results table."""
    text = readme()
    rows = {(m[1], m[3]): tuple(float(v) for v in m.groups()[3:]) for m in ROW.finditer(text)}
    assert set(rows) == set(RUNS), f"README's results table has rows for {sorted(rows)}"
    return rows


def results():
    """What `python evaluate.py --run-name NAME --exact --k 5000 --json` printed, committed as runs/NAME.json."""
    found = {}
    for name in ("reference", "binarized"):
        with open(os.path.join(ROOT, "runs", f"{name}.json")) as f:
            for model, figures in json.load(f).items():
                found[(model, name)] = figures
    return found


def printed(value, digits):
    return f"{value:.{digits}f}"


@pytest.mark.parametrize("model_name, run_name", RUNS)
def test_checkpoint_gives_the_readme_elbo(model_name, run_name):
    model, checkpoint = load_model(os.path.join(ROOT, "runs", model_name, run_name, "checkpoint.pt"))
    assert checkpoint["epoch"] + 1 == (50 if model_name == "VAE" else 20)
    assert checkpoint["args"]["binarize"] == ("dynamic" if run_name == "binarized" else "none")
    test_x, test_y = load_mnist(os.path.join(ROOT, "data"), train=False, binarized=run_name == "binarized")
    generator = torch.Generator().manual_seed(checkpoint["args"]["seed"])
    test_elbo = loss_sums(model, test_x, test_y, generator).sum().item() / len(test_x)
    elbo, *_ = readme_rows()[(model_name, run_name)]
    assert printed(test_elbo, 2) == printed(elbo, 2)
    assert printed(checkpoint["test_loss"], 2) == printed(elbo, 2)  # the loss the run logged


@pytest.mark.parametrize("model_name, run_name", RUNS)
def test_readme_bounds_are_evaluates_and_in_order(model_name, run_name):
    figures = results()[(model_name, run_name)]
    elbo, iwae, exact, _, _ = readme_rows()[(model_name, run_name)]
    assert figures["k"] == 5000 and figures["n_images"] == 10000
    assert printed(figures["test_loss"], 2) == printed(elbo, 2)
    assert printed(figures["iwae_nll"], 2) == printed(iwae, 2)
    assert printed(figures["exact_nll"], 2) == printed(exact, 2)
    assert figures["exact_nll"] <= figures["iwae_nll"] <= figures["test_loss"]  # as the mathematics requires


def final_test_loss(run_dir):
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars("test/loss")[-1].value


@pytest.mark.slow
@pytest.mark.parametrize("model_name, run_name", RUNS)
def test_readme_seed_spread_matches_the_committed_logs(model_name, run_name):
    runs = [os.path.join(ROOT, "runs", model_name, run_name)]
    runs += [os.path.join(ROOT, "runs", "recipes", model_name, f"{run_name}-seed{s}") for s in (1, 2)]
    losses = [final_test_loss(run) for run in runs]
    *_, mean, sd = readme_rows()[(model_name, run_name)]
    assert printed(statistics.mean(losses), 2) == printed(mean, 2)
    assert printed(statistics.stdev(losses), 2) == printed(sd, 2)  # the sample standard deviation


def grid_cells(path, rows, columns=8):
    """The 28 x 28 images of a save_image grid (padding 2), as (rows * columns, 784)."""
    image = torch.from_numpy(np.array(Image.open(path).convert("L"))).float() / 255
    assert image.shape == (2 + 30 * rows, 2 + 30 * columns)
    return torch.stack(
        [image[2 + r * 30 : 30 + r * 30, 2 + c * 30 : 30 + c * 30] for r in range(rows) for c in range(columns)]
    ).view(-1, 784)


@pytest.mark.parametrize("run_name", ["reference", "binarized"])
def test_committed_grids_show_the_digits(run_name):
    classifier = load_classifier(os.path.join(ROOT, "data", "classifier.pt"))
    with torch.no_grad():
        cvae = classifier(grid_cells(os.path.join(ROOT, "out_CVAE", run_name, "019.png"), rows=10)).argmax(1)
        vae = classifier(grid_cells(os.path.join(ROOT, "out", run_name, "049.png"), rows=8)).argmax(1)
    assert (cvae == torch.arange(10).repeat_interleave(8)).float().mean() >= 0.95  # row r shows digit r
    counts = torch.bincount(vae, minlength=10)
    assert (counts > 0).sum() >= 8 and counts.max() <= 0.3 * len(vae)
    assert sorted(os.listdir(os.path.join(ROOT, "out", run_name))) == [f"{e:03d}.png" for e in range(50)]
    assert sorted(os.listdir(os.path.join(ROOT, "out_CVAE", run_name))) == [f"{e:03d}.png" for e in range(20)]


# --- the literature table: runs/literature.json, the default, long and davidson runs at each latent size --------

LITERATURE = {  # run name: latent size
    **{"binarized": 2, "long": 2},
    **{f"{kind}{d}": d for d in (5, 10, 20) for kind in ("latent", "long")},
    **{f"davidson{d}": d for d in (2, 5, 10, 20, 40)},
}
# Davidson et al. 2018, Table 1, -log p(x) by importance sampling with 500 samples: (N-VAE, S-VAE)
PUBLISHED = {
    2: ("135.73", "132.50"),
    5: ("110.21", "108.43"),
    10: ("93.84", "93.16"),
    20: ("88.90", "89.02"),
    40: ("88.93", "90.87"),
}
LITERATURE_ROW = re.compile(
    r"^\| (\d+) \| `(\w+)` \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+|–) \| (\d+) \| ([\d.]+) / ([\d.]+) \|$",
    re.MULTILINE,
)


def literature():
    """{run name: figures} of runs/literature.json: what `python evaluate.py --checkpoint runs/VAE/binarized ...
    --exact --k 500 5000 --json` printed (the command is in runs/README.md)."""
    with open(os.path.join(ROOT, "runs", "literature.json")) as f:
        return {os.path.basename(os.path.dirname(r["checkpoint"])): r for r in json.load(f).values()}


def test_literature_json_has_every_run_and_its_bounds_are_in_order():
    found = literature()
    assert set(found) == set(LITERATURE)
    for name, r in found.items():
        assert r["n_images"] == 10000 and r["binarized"]
        assert r["latent_dim"] == LITERATURE[name] and 0 <= r["active_units"] <= r["latent_dim"]
        assert r["arch"] == ("davidson" if name.startswith("davidson") else "original")
        # the paper's estimator (k = 500) and a tighter one (k = 5,000)
        assert set(r["iwae"]) == {"500", "5000"} and r["k"] == 5000 and r["iwae_nll"] == r["iwae"]["5000"]
        assert r["iwae"]["5000"] < r["iwae"]["500"] < r["test_loss"]
        assert ("exact_nll" in r) == (LITERATURE[name] == 2)
        if "exact_nll" in r:
            assert r["exact_nll"] <= r["iwae_nll"]


def test_literature_runs_are_evaluated_at_the_checkpoint_chosen_on_validation():
    """A run that kept best.pt is measured there (its lowest validation -ELBO, as early stopping would pick),
    one that did not at its last checkpoint."""
    for name, r in literature().items():
        run_dir = os.path.join(ROOT, "runs", "VAE", name)
        last = read_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
        if os.path.exists(os.path.join(run_dir, "best.pt")):
            assert r["checkpoint"] == f"runs/VAE/{name}/best.pt"
            best = read_checkpoint(os.path.join(run_dir, "best.pt"))
            assert best["epoch"] == last["best_epoch"] and best["val_loss"] == last["best_val_loss"]
            assert r["epochs"] == best["epoch"] + 1 and r["logged_test_loss"] == best["test_loss"]
        else:
            assert r["checkpoint"] == f"runs/VAE/{name}/checkpoint.pt" and r["epochs"] == last["epoch"] + 1


def test_readme_literature_table_is_the_json():
    text = readme()
    rows = {m[2]: m.groups() for m in LITERATURE_ROW.finditer(text)}
    assert set(rows) == set(LITERATURE), f"README's literature table has rows for {sorted(rows)}"
    for name, r in literature().items():
        latent, _, elbo, iwae500, iwae5000, exact, active, n_vae, s_vae = rows[name]
        assert int(latent) == LITERATURE[name] and (n_vae, s_vae) == PUBLISHED[int(latent)]
        assert (elbo, iwae500, iwae5000, int(active)) == (
            printed(r["test_loss"], 2),
            printed(r["iwae"]["500"], 2),
            printed(r["iwae"]["5000"], 2),
            r["active_units"],
        )
        assert exact == (printed(r["exact_nll"], 2) if "exact_nll" in r else "–")


def test_readme_margins_over_the_published_figures_are_the_tables():
    """The sentence under the literature table: how far the davidson runs' k = 500 figures lie below the N-VAE's
    and the S-VAE's, size by size, and how far the original networks' long runs lie behind the N-VAE's."""
    text, found = " ".join(readme().split()), literature()
    for i, model in enumerate(("beat the N-VAE at each size, by", "and the S-VAE by")):
        margins = [float(PUBLISHED[d][i]) - found[f"davidson{d}"]["iwae"]["500"] for d in (2, 5, 10, 20, 40)]
        assert f"{model} {', '.join(printed(m, 2) for m in margins)} " in text
    behind = [
        found[name]["iwae"]["500"] - float(PUBLISHED[LITERATURE[name]][0])
        for name in ("long", "long5", "long10", "long20")
    ]
    assert f"long runs stay {printed(min(behind), 2)} to {printed(max(behind), 2)} behind" in text


@pytest.mark.parametrize("run_name", sorted(LITERATURE))
def test_literature_checkpoint_gives_its_test_loss_and_active_units(run_name):
    """An independent −ELBO of the checkpoint on the binarised test set is the logged and reported one, and an
    independent count of its active units (variance of the encoder's mean over the test images > 0.01) too."""
    figures = literature()[run_name]
    model, checkpoint = load_model(os.path.join(ROOT, figures["checkpoint"]))
    assert model.latent_dim == LITERATURE[run_name] and checkpoint["args"]["binarize"] == "dynamic"
    test_x, test_y = load_mnist(os.path.join(ROOT, "data"), train=False, binarized=True)
    generator = torch.Generator().manual_seed(checkpoint["args"]["seed"])
    test_elbo = loss_sums(model, test_x, test_y, generator).sum().item() / len(test_x)
    assert printed(test_elbo, 2) == printed(figures["test_loss"], 2) == printed(checkpoint["test_loss"], 2)
    with torch.no_grad():
        means = model.encoder.mu(model.encoder.body(test_x))
    assert int((means.double().var(0, correction=0) > 0.01).sum()) == figures["active_units"]


@pytest.mark.slow
def test_an_independent_iwae_with_500_samples_gives_the_tables_figure():
    """The paper's estimator, written here with torch.distributions and other noise, on the whole test set:
    -log (1/500) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x); its standard error is about 0.01 nat."""
    figures = literature()["davidson40"]
    model, _ = load_model(os.path.join(ROOT, figures["checkpoint"]))
    test_x, _ = load_mnist(os.path.join(ROOT, "data"), train=False, binarized=True)
    torch.manual_seed(1)
    k, nll, prior = 500, [], torch.distributions.Normal(0.0, 1.0)
    with torch.no_grad():
        for x in test_x.split(20):
            mu, logvar = model.encode(x)
            q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
            z = q.sample((k,))  # (k, images, latent)
            p_x = torch.distributions.Bernoulli(logits=model.decode_logits(z.flatten(0, 1)).view(k, len(x), -1))
            log_w = p_x.log_prob(x).sum(-1) + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
            nll.append(math.log(k) - torch.logsumexp(log_w.double(), 0))
    assert torch.cat(nll).mean().item() == pytest.approx(figures["iwae"]["500"], abs=0.05)


SPEED_ROW = re.compile(
    r"^\| [^|]*\(`([\w.-]+\.txt)`\) \| ([\d.]+) s \| (\d+)(?: GFLOP/s / –| / (\d+) GFLOP/s) "
    r"\| (\d+) %(?: / (\d+) %)?(?: of float32)? \|$",
    re.M,
)


def test_the_speed_history_is_what_bench_printed():
    """Each row of runs/README.md's table of bench runs: the epoch seconds, float32 peaks and fractions of the
    bench.py output it names."""
    text = open(os.path.join(ROOT, "runs", "README.md"), encoding="utf-8").read()
    rows = SPEED_ROW.findall(text[text.index("## Speed") :])
    assert len(rows) == 5, rows
    for name, seconds, before, after, fraction, fraction_after in rows:
        out = open(os.path.join(ROOT, "runs", name), encoding="utf-8").read()
        m = re.search(
            r"^python train.py --(?:no-)?bf16: ([\d.]+) s per epoch .*?: (\d+)% of the float32 peak"
            r"(?: \((\d+)% of it after\))?",
            out,
            re.M,
        )
        assert m and m[1] == seconds and m[2] == fraction and m[3] == (fraction_after or None), (name, m and m.groups())
        # the README rounds the printed GFLOP/s to whole numbers
        assert abs(float(re.search(r"^matmul peak, float32: ([\d.]+) GFLOP/s", out, re.M)[1]) - int(before)) <= 0.5, (
            name
        )
        m = re.search(r"^matmul peak again after the epochs: float32 ([\d.]+) GFLOP/s", out, re.M)
        assert bool(m) == bool(after) and (not m or abs(float(m[1]) - int(after)) <= 0.5), name


README_SPEED_ROW = re.compile(
    r"^\| [^|]*\(`([\w.-]+\.txt)`\) \| ([\d.]+) s \| (\d+) % / (\d+) % \| ([\d.]+) s \| ([\d.]+) s \|$", re.M
)


def test_the_readme_speed_table_is_the_latest_bench_output():
    """The README's speed table: a whole epoch, its share of the float32 peak before and after, the training pass
    and the classic pipeline's, as the bench.py output of each row printed them."""
    text = readme()
    speed = text[text.index("## Speed") : text.index("## Tests")]
    rows = README_SPEED_ROW.findall(speed)
    assert [row[0] for row in rows] == ["bench-2026-12-03-bfloat16.txt", "bench-2026-12-03-float32.txt"], rows
    for name, epoch, before, after, ours, classic in rows:
        out = open(os.path.join(ROOT, "runs", name), encoding="utf-8").read()
        m = re.search(
            r"^python train.py --(?:no-)?bf16: ([\d.]+) s per epoch .*?: "
            r"(\d+)% of the float32 peak \((\d+)% of it after\)",
            out,
            re.M,
        )
        assert m.groups() == (epoch, before, after), name
        assert re.search(rf"^train.py\s+{re.escape(ours)} s/epoch", out, re.M), name
        assert re.search(rf"^classic\s+{re.escape(classic)} s/epoch", out, re.M), name


def test_the_readme_is_a_front_door():
    """At most 12,000 characters, its speed section at most 1,500: method and history go to runs/README.md."""
    text = readme()
    assert len(text) <= 12000, len(text)
    assert len(text[text.index("## Speed") : text.index("\n## ", text.index("## Speed") + 1)]) <= 1500


def test_the_readme_python_example_runs(monkeypatch):
    """The README's Python example, pasted as is, runs on the committed checkpoint and gives what its comments say."""
    text = readme()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1, blocks
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["model"].training is False and scope["images"].shape == (16, 784)
    assert scope["logits"].shape == (10000, 784) and 0 <= scope["images"].min() and scope["images"].max() <= 1
    # one z per image, from the global generator: the logged test loss of that run, up to the noise of one draw
    assert (
        abs(scope["loss"].item() - json.load(open(os.path.join(ROOT, "runs", "reference.json")))["VAE"]["test_loss"])
        < 0.2
    )
