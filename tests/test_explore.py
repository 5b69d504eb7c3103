"""explore.py: the page's decoder, run in headless Chromium, against PyTorch's; its controls; its picture; its
one-line errors; its template, a file of its own.

The page is built from a copy of the committed reference runs (--runs-dir TMP --run-name reference). Without a
Chromium on the PATH the browser tests are skipped, except where CI or REQUIRE_BROWSER is set (.ci/run sets it
and installs Debian's chromium): there they fail.
"""

import ast
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run
from PIL import Image

from models import VAE, load_checkpoint

TEMPLATE = Path(ROOT) / "explore_page.html"
RUNS = {name: os.path.join(ROOT, "runs", name, "reference", "checkpoint.pt") for name in ("VAE", "CVAE")}
BROWSERS = ("chromium", "chromium-browser")
REQUIRED = bool(os.environ.get("CI") or os.environ.get("REQUIRE_BROWSER"))
WINDOW = (1000, 620)  # the README's screenshot: the plane and the digit side by side

# points that nobody chose: a seeded draw over the plane (a few far out, where the sigmoid saturates), and digits
_generator = torch.Generator().manual_seed(16)
POINTS = (
    [("VAE", z, None) for z in (torch.randn(2, 2, generator=_generator) * 2).tolist()]
    + [("VAE", [4.5, -5.0], None)]
    + [
        ("CVAE", z, d)
        for z, d in zip(
            (torch.randn(3, 2, generator=_generator) * 2).tolist(),
            torch.randint(0, 10, (3,), generator=_generator).tolist(),
            strict=True,
        )
    ]
)


@pytest.fixture(scope="module")
def browser():
    path = next(filter(None, map(shutil.which, BROWSERS)), None)
    if path is None:
        if REQUIRED:
            pytest.fail("no chromium on the PATH, and CI needs the explorer's browser test: apt-get install chromium")
        pytest.skip("no chromium on the PATH: apt-get install chromium to run the explorer's browser tests")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A copy of the reference checkpoints in TMP/runs/MODEL/reference/: the page and PyTorch read the same files."""
    tmp = tmp_path_factory.mktemp("runs")
    for name, path in RUNS.items():
        os.makedirs(tmp / name / "reference")
        shutil.copy(path, tmp / name / "reference" / "checkpoint.pt")
    return tmp


@pytest.fixture(scope="module")
def page(runs):
    out = runs.parent / "page.html"
    result = run("explore.py", "--runs-dir", runs, "--run-name", "reference", "--out", out)
    assert result.stdout.strip() == str(out)
    return out


@pytest.fixture(scope="module")
def models(runs):
    return {name: load_checkpoint(runs / name / "reference" / "checkpoint.pt") for name in RUNS}


def open_page(browser, page, fragment, *flags, tmp=None):
    """Headless Chromium's --dump-dom (or whatever `flags` ask for) of page#fragment; its stdout."""
    with tempfile.TemporaryDirectory(dir=tmp) as profile:  # a fresh profile: no state from another run
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                *flags,
                f"{page.as_uri()}#{fragment}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def pre(dom, name):
    match = re.search(rf'<pre id="{name}">([^<]*)</pre>', dom)
    assert match, f'no <pre id="{name}"> in the page:\n{dom[-3000:]}'
    return html.unescape(match.group(1))


def decoded(models, name, z, digit):
    model = models[name]
    with torch.no_grad():
        return model.decode(torch.tensor([z]), torch.tensor([digit]) if model.conditional else None)[0].numpy()


def test_page_is_self_contained(page):
    text = page.read_text()
    assert not re.search(r"https?:", text)
    assert not re.search(r"<(link|iframe|img|object|embed)\b|<script[^>]*\bsrc\s*=|@import|url\(", text, re.I)
    assert '"name": "VAE"' in text and '"name": "CVAE"' in text
    assert len(text) < 5_000_000  # both decoders and both sets of 10,000 codes


@pytest.mark.parametrize("name, z, digit", POINTS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(POINTS)])
def test_decode_in_the_browser(browser, page, models, tmp_path, name, z, digit):
    fragment = f"model={name}&z={z[0]!r},{z[1]!r}" + (f"&digit={digit}" if digit is not None else "") + "&dump"
    values = pre(open_page(browser, page, fragment, "--dump-dom", tmp=tmp_path), "dump").split(",")
    assert len(values) == 784
    assert all(len(re.sub(r"e.*|^0\.0*|\.", "", v)) >= 6 for v in values)  # at least 6 significant digits
    assert np.abs(np.array(values, dtype=float) - decoded(models, name, z, digit)).max() < 1e-4


# Run after the page's own script: pointer over the plane, two clicks, the CVAE's button and a digit's.
HARNESS = """<script>
const out = {}, r = plane.getBoundingClientRect();
const at = (type, fx, fy) => plane.dispatchEvent(new PointerEvent(type,
  {bubbles: true, clientX: r.left + fx * r.width, clientY: r.top + fy * r.height}));
const pixels = (id, left) =>
  Array.from($(id).getContext("2d").getImageData(left || 0, 0, 28, 28).data.filter((_, i) => i % 4 === 0));
at("pointermove", 0.3, 0.6);
out.hover = {z: state.hover, pixels: pixels("digit"), text: $("z").textContent};
at("click", 0.3, 0.6); at("pointermove", 0.7, 0.25); at("click", 0.7, 0.25); at("pointerleave", 0.7, 0.25);
out.pinned = {a: state.a, b: state.b, hash: location.hash, strip: $("strip").style.visibility,
              first: pixels("strip", 0), last: pixels("strip", 28 * 9), text: $("z").textContent};
Array.from($("models").children).find(b => b.textContent === "CVAE").click();
Array.from($("digits").children).find(b => b.textContent === "7").click();
out.cvae = {z: state.z, pixels: pixels("digit"), hash: location.hash, digits: $("digits").style.display};
document.body.insertAdjacentHTML("beforeend", "<pre id='harness'></pre>");
$("harness").textContent = JSON.stringify(out);
</script>
"""


def test_pointer_clicks_and_buttons(browser, page, models, tmp_path):
    harnessed = tmp_path / "harnessed.html"
    harnessed.write_text(page.read_text().replace("</body>", HARNESS + "</body>"))
    out = json.loads(pre(open_page(browser, harnessed, "model=VAE", "--dump-dom", tmp=tmp_path), "harness"))

    def as_drawn(p):
        return np.round(255 * p)

    hover = out["hover"]
    assert hover["z"][0] < 0 < -hover["z"][1]  # left of the centre and below it
    assert np.abs(np.array(hover["pixels"]) - as_drawn(decoded(models, "VAE", hover["z"], None))).max() <= 1
    assert f"{abs(hover['z'][0]):.3f}" in hover["text"]
    pinned = out["pinned"]
    assert np.abs(np.array(pinned["a"]) - hover["z"]).max() < 0.02  # a click's position is in whole pixels
    assert pinned["strip"] == "visible"
    assert re.search(r"model=VAE&z=.*&a=.*&b=", pinned["hash"])
    assert np.abs(np.array(pinned["first"]) - as_drawn(decoded(models, "VAE", pinned["a"], None))).max() <= 1
    assert np.abs(np.array(pinned["last"]) - as_drawn(decoded(models, "VAE", pinned["b"], None))).max() <= 1
    assert f"{pinned['b'][1]:.3f}" in pinned["text"]  # the pointer gone, the page shows the last click
    cvae = out["cvae"]
    assert (
        cvae["z"] == pinned["b"] and cvae["digits"] == "" and "model=CVAE" in cvae["hash"] and "digit=7" in cvae["hash"]
    )
    assert np.abs(np.array(cvae["pixels"]) - as_drawn(decoded(models, "CVAE", cvae["z"], 7))).max() <= 1


def test_one_model_and_the_default_out(browser, runs, tmp_path):
    # from another folder, with no --out: explore.html there, holding the VAE only
    result = run(
        "explore.py", "--checkpoint", runs / "VAE" / "reference", "--data-dir", os.path.join(ROOT, "data"), cwd=tmp_path
    )
    page = tmp_path / "explore.html"
    assert result.stdout.strip() == "explore.html" and '"name": "CVAE"' not in page.read_text()
    dump = pre(open_page(browser, page, "model=CVAE&z=0,0&dump", "--dump-dom", tmp=tmp_path), "dump")
    assert dump == "error: this page has no CVAE; it holds VAE"


def test_screenshot_shows_the_plane_and_the_digit(browser, page, tmp_path):
    fragment = "model=VAE&z=0.5,-1"
    size = f"--window-size={WINDOW[0]},{WINDOW[1]}"
    layout = json.loads(pre(open_page(browser, page, fragment + "&dump", size, "--dump-dom", tmp=tmp_path), "layout"))
    shot = tmp_path / "shot.png"
    open_page(browser, page, fragment, size, f"--screenshot={shot}", tmp=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])

    def region(name):
        left, top, width, height = (round(v) for v in layout[name])
        assert left >= 0 and top >= 0 and left + width <= WINDOW[0] and top + height <= WINDOW[1], (name, layout)
        return pixels[top + 2 : top + height - 2, left + 2 : left + width - 2]

    plane, digit = region("plane"), region("digit")
    assert layout["plane"][0] < layout["digit"][0]  # side by side
    assert plane.std() > 10 and len(np.unique(plane.reshape(-1, 3), axis=0)) > 100  # the scatter's colours, not a blank
    assert digit.std() > 30 and (digit > 200).any() and (digit < 30).any()  # white ink on black


def test_the_template_is_a_file_of_its_own():
    # explore.py holds no page: every string in it of more than one line is a docstring
    with open(os.path.join(ROOT, "explore.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and ast.get_docstring(node) is not None
    }
    strings = [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    assert [node.lineno for node in strings if "\n" in node.value and id(node) not in docstrings] == []
    assert TEMPLATE.read_text(encoding="utf-8").count("/*DATA*/null") == 1  # the placeholder that explore.py fills


def test_the_template_opened_as_it_is(browser, tmp_path):
    # no models and no error: a message that says what it is (set by the script's last lines, after all the others)
    message = re.search(
        r'<span id="message">([^<]*)</span>', open_page(browser, TEMPLATE, "", "--dump-dom", tmp=tmp_path)
    )
    assert message and "template" in message.group(1) and "python explore.py" in message.group(1)


# --- one-line errors ------------------------------------------------------------------------------


def checkpoint(path, latent_dim, weights_latent_dim):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(
        {
            "model": "VAE",
            "args": {"latent_dim": latent_dim},
            "epoch": 0,
            "weights": VAE(latent_dim=weights_latent_dim).state_dict(),
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    "case, phrases",
    [
        ("missing", ["no checkpoint.pt there"]),
        ("not fitting", ["do not fit a VAE with latent size 2"]),
        ("latent 5", ["the explorer page needs a 2-d latent; this run has latent size 5"]),
        ("two VAEs", ["2 VAE checkpoints given"]),
    ],
)
def test_one_line_errors(tmp_path, case, phrases):
    flags = {
        "missing": lambda: ["--checkpoint", tmp_path / "runs" / "VAE" / "gone"],
        "not fitting": lambda: ["--checkpoint", checkpoint(tmp_path / "x" / "checkpoint.pt", 2, 5)],
        "latent 5": lambda: ["--checkpoint", checkpoint(tmp_path / "x" / "checkpoint.pt", 5, 5)],
        "two VAEs": lambda: ["--checkpoint", RUNS["VAE"], "--checkpoint", os.path.dirname(RUNS["VAE"])],
    }[case]()
    out = tmp_path / "page.html"
    result = run("explore.py", *flags, "--out", out, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert not out.exists()
