"""The latent plane in the browser:  python explore.py  (--help for the flags)

Writes one self-contained HTML page, by default explore.html, for the newest VAE and CVAE
runs (or --run-name, or --checkpoint): the decoders' weights (base64 float32), a JavaScript
forward pass of the decoder, and the latent means of the 10,000 test images, coloured by
digit, as the background of the plane. It loads nothing from the network, so it opens from
a file, offline. Both models need a 2-d latent.

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

import utils
from mnist import load_mnist
from models import MODELS, encode_means

DEFAULTS = dict(
    utils.RUN_DEFAULTS,  # run_name None: the newest run of each model
    out="explore.html",
)


def b64(tensor, dtype="<f4"):
    """A tensor's values as base64 of little-endian float32 (or another numpy dtype), as the page's typed arrays read them."""
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
    p = utils.parser(
        "Write a self-contained HTML page that decodes the latent plane of the VAE and CVAE "
        "checkpoints in the browser, over their test images' latent means.",
        DEFAULTS,
    )
    utils.add_run_flags(p)
    utils.add_data_flag(p)
    p.add_argument("--out", metavar="FILE", help="the page to write")
    args, _ = utils.parse(p, DEFAULTS)

    loaded = []
    for _, path in utils.choose_runs(args.runs_dir, args.run_name, args.checkpoint):
        model, checkpoint = utils.load_model(path)
        if model.latent_dim != 2:
            raise utils.UserError(
                f"{path}: the explorer page needs a 2-d latent; this run has latent size {model.latent_dim}"
            )
        loaded.append((checkpoint["model"], path, model, checkpoint))
    names = [name for name, *_ in loaded]
    for name in set(names):
        if names.count(name) > 1:
            raise utils.UserError(
                f"{names.count(name)} {name} checkpoints given; the page holds one of each model: pass one"
            )
    loaded.sort(key=lambda run: list(MODELS).index(run[0]))  # the VAE first: the page opens on it
    utils.writable_dir(os.path.dirname(args.out) or ".", "--out")

    models = []
    for name, path, model, checkpoint in loaded:
        # the test images of the kind the run was trained on, as sample.py and latent_dist.py use them
        images, labels = load_mnist(
            args.data_dir, train=False, binarized=utils.binarized(checkpoint["args"].get("binarize"))
        )
        models.append(page_model(name, path, model, checkpoint, encode_means(model, images, labels), labels))
    data = json.dumps(dict(models=models)).replace("</", "<\\/")  # nothing in it may close the <script>
    utils.save_atomic(PAGE.replace("/*DATA*/null", data).encode(), args.out)
    print(args.out)


# The page: plain HTML, inline CSS and JavaScript, no external file of any kind.
PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Latent plane explorer</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 10px 16px; color: #222; background: #fff; }
  header { display: flex; gap: 14px; align-items: baseline; flex-wrap: wrap; margin-bottom: 8px; }
  h1 { font-size: 17px; font-weight: 600; margin: 0; }
  main { display: flex; gap: 22px; align-items: flex-start; flex-wrap: wrap; }
  #plane { width: 520px; height: 520px; display: block; outline: 1px solid #bbb; cursor: crosshair; touch-action: none; }
  #legend { margin-top: 4px; font-size: 13px; }
  #legend span { margin-right: 9px; white-space: nowrap; }
  #legend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 3px; }
  #side { width: 400px; }
  #digit { width: 280px; height: 280px; display: block; background: #000; image-rendering: pixelated; }
  #z { font: 15px ui-monospace, Menlo, Consolas, monospace; margin: 6px 0 8px; white-space: pre; }
  #strip { width: 400px; height: 40px; display: block; background: #000; image-rendering: pixelated; margin-top: 3px; }
  button { font: inherit; padding: 2px 10px; border: 1px solid #999; border-radius: 4px; background: #f3f3f3; color: #222; cursor: pointer; }
  button.on { background: #333; border-color: #333; color: #fff; }
  #digits { margin-bottom: 10px; }
  #digits button { min-width: 32px; padding: 2px 0; margin: 0 2px 2px 0; }
  .note { color: #666; font-size: 12px; }
  #message { color: #b00; }
  #dump, #layout { display: none; }
</style>
</head>
<body>
<header><h1>Latent plane explorer</h1><span id="models"></span><span id="message"></span></header>
<main>
  <div><canvas id="plane"></canvas><div id="legend"></div></div>
  <div id="side">
    <canvas id="digit" width="28" height="28"></canvas>
    <div id="z"></div>
    <div id="digits"></div>
    <div class="note" id="striplabel"></div>
    <canvas id="strip" width="280" height="28"></canvas>
    <p class="note" id="about"></p>
  </div>
</main>
<pre id="dump"></pre>
<script>
"use strict";
const DATA = /*DATA*/null;
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];  // matplotlib's tab10, as latent_dist.py
const STEPS = 10;  // images in the interpolation strip, both pinned points included
const $ = id => document.getElementById(id);

function bytes(text) {
  const s = atob(text), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
const floats = text => new Float32Array(bytes(text).buffer);  // little-endian, as explore.py writes them

const MODELS = {};
for (const m of DATA.models) {
  MODELS[m.name] = Object.assign({}, m, {w1: floats(m.w1), b1: floats(m.b1), w2: floats(m.w2), b2: floats(m.b2),
                                         means: floats(m.means), labels: bytes(m.labels)});
}

// The decoder: Linear(inputs, hidden) -> ReLU -> Linear(hidden, 784) -> sigmoid, in float64 over the float32 weights.
// The CVAE's input is (z1, z2, one-hot digit): the one-hot picks one column of the first layer.
function decode(m, z, digit) {
  const I = m.inputs, H = m.hidden, h = new Float64Array(H), p = new Float64Array(784);
  for (let j = 0; j < H; j++) {
    let a = m.b1[j] + m.w1[j * I] * z[0] + m.w1[j * I + 1] * z[1];
    if (m.conditional) a += m.w1[j * I + 2 + digit];
    h[j] = a > 0 ? a : 0;
  }
  for (let i = 0; i < 784; i++) {
    let a = m.b2[i];
    for (let j = 0, row = i * H; j < H; j++) a += m.w2[row + j] * h[j];
    const e = Math.exp(-Math.abs(a));  // a stable sigmoid: exp of a non-positive number only
    p[i] = a >= 0 ? 1 / (1 + e) : e / (1 + e);
  }
  return p;
}

const state = {model: MODELS.VAE ? "VAE" : DATA.models[0].name, digit: 0, z: [0, 0], a: null, b: null, hover: null};
const shown = () => state.hover || state.z;  // under the pointer, else the last click (or the hash's z)
const plane = $("plane"), ctx = plane.getContext("2d");
const ratio = window.devicePixelRatio || 1;
plane.width = plane.height = Math.round(520 * ratio);
const S = plane.width;
let background = null, backgroundKey = "", stripKey = "";  // what is drawn already

const toPixel = (m, z) => [(z[0] + m.extent) / (2 * m.extent) * S, (m.extent - z[1]) / (2 * m.extent) * S];
const toLatent = (m, x, y) => [x / S * 2 * m.extent - m.extent, m.extent - y / S * 2 * m.extent];

// The plane without the pointer: grid, test codes, prior circles; drawn once per model (and digit).
function drawBackground(m) {
  const c = document.createElement("canvas");
  c.width = c.height = S;
  const g = c.getContext("2d"), R = m.extent, unit = S / (2 * R);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, S, S);
  g.lineWidth = ratio;
  for (let v = Math.ceil(-R); v <= R; v++) {
    const [x, y] = toPixel(m, [v, v]);
    g.strokeStyle = v === 0 ? "#bbb" : "#eee";
    g.beginPath(); g.moveTo(x, 0); g.lineTo(x, S); g.moveTo(0, y); g.lineTo(S, y); g.stroke();
  }
  // the CVAE's codes of every digit fill the plane: the chosen digit's stand out
  const size = 2.2 * ratio, n = m.labels.length;
  for (let pass = 0; pass < (m.conditional ? 2 : 1); pass++) {
    for (let i = 0; i < n; i++) {
      const label = m.labels[i];
      if (m.conditional && (label === state.digit) !== (pass === 1)) continue;
      g.globalAlpha = !m.conditional ? 0.5 : pass === 1 ? 0.75 : 0.12;
      g.fillStyle = COLOURS[label];
      const [x, y] = toPixel(m, [m.means[2 * i], m.means[2 * i + 1]]);
      g.fillRect(x - size / 2, y - size / 2, size, size);
    }
  }
  g.globalAlpha = 1;
  g.strokeStyle = "rgba(0,0,0,0.55)";
  g.fillStyle = "#444";
  g.setLineDash([5 * ratio, 4 * ratio]);
  g.font = `${12 * ratio}px system-ui, sans-serif`;
  const [cx, cy] = toPixel(m, [0, 0]);
  for (let k = 1; k <= 3; k++) {
    g.beginPath(); g.arc(cx, cy, k * unit, 0, 2 * Math.PI); g.stroke();
    g.fillText(`${k}σ`, cx + k * unit * 0.72, cy - k * unit * 0.72);
  }
  g.setLineDash([]);
  g.fillStyle = "#666";
  for (let v = Math.ceil(-R); v <= R; v++) {
    if (v === 0 || Math.abs(v) > R - 0.3) continue;  // none at the corners, where they would overlap
    const [x, y] = toPixel(m, [v, v]);
    const text = (v < 0 ? "−" : "") + Math.abs(v);
    g.fillText(text, x + 2 * ratio, S - 4 * ratio);
    g.fillText(text, 3 * ratio, y - 2 * ratio);
  }
  g.fillText("z₁ →", S - 34 * ratio, cy - 4 * ratio);
  g.fillText("z₂ ↑", cx + 4 * ratio, 14 * ratio);
  return c;
}

function dot(z, radius, fill, label) {
  const [x, y] = toPixel(MODELS[state.model], z);
  ctx.beginPath(); ctx.arc(x, y, radius * ratio, 0, 2 * Math.PI);
  ctx.fillStyle = fill; ctx.fill();
  ctx.lineWidth = 1.5 * ratio; ctx.strokeStyle = "#fff"; ctx.stroke();
  if (label) {
    ctx.font = `bold ${13 * ratio}px system-ui, sans-serif`;
    ctx.lineWidth = 3 * ratio; ctx.strokeText(label, x + 7 * ratio, y - 7 * ratio);
    ctx.fillStyle = "#000"; ctx.fillText(label, x + 7 * ratio, y - 7 * ratio);
  }
}

const along = t => [state.a[0] + t * (state.b[0] - state.a[0]), state.a[1] + t * (state.b[1] - state.a[1])];

function drawPlane() {
  const m = MODELS[state.model], key = state.model + (m.conditional ? state.digit : "");
  if (key !== backgroundKey) { background = drawBackground(m); backgroundKey = key; }
  ctx.drawImage(background, 0, 0);
  if (state.a && state.b) {
    const [x0, y0] = toPixel(m, state.a), [x1, y1] = toPixel(m, state.b);
    ctx.lineWidth = 2 * ratio; ctx.strokeStyle = "#000";
    ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
    for (let s = 1; s < STEPS - 1; s++) dot(along(s / (STEPS - 1)), 2.5, "#000");
  }
  if (state.a) dot(state.a, 5, "#000", "A");
  if (state.b) dot(state.b, 5, "#000", "B");
  {  // the point shown: a red ring
    const [x, y] = toPixel(m, shown());
    ctx.lineWidth = 2 * ratio; ctx.strokeStyle = "#d00";
    ctx.beginPath(); ctx.arc(x, y, 7 * ratio, 0, 2 * Math.PI); ctx.stroke();
  }
}

// Probabilities into a canvas's pixels at (left, 0): white ink on black, as the repo's pictures.
function paint(canvas, p, left) {
  const g = canvas.getContext("2d"), image = g.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = Math.round(255 * p[i]);
    image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = v;
    image.data[4 * i + 3] = 255;
  }
  g.putImageData(image, left, 0);
}

const fmt = v => (v < 0 ? "−" : " ") + Math.abs(v).toFixed(3);

function render() {
  const m = MODELS[state.model], z = shown();
  drawPlane();
  paint($("digit"), decode(m, z, state.digit), 0);
  $("z").textContent = `z = (${fmt(z[0])}, ${fmt(z[1])})` + (m.conditional ? `   digit ${state.digit}` : "");
  for (const b of $("models").children) b.className = b.textContent === state.model ? "on" : "";
  $("digits").style.display = m.conditional ? "" : "none";
  for (const b of $("digits").children) b.className = Number(b.textContent) === state.digit ? "on" : "";
  const strip = $("strip");
  strip.style.visibility = state.a && state.b ? "visible" : "hidden";
  const key = JSON.stringify([state.model, state.digit, state.a, state.b]);
  if (state.a && state.b && key !== stripKey) {  // not again for each move of the pointer
    for (let s = 0; s < STEPS; s++) paint(strip, decode(m, along(s / (STEPS - 1)), state.digit), 28 * s);
    stripKey = key;
  }
  if (state.a && state.b) {
    $("striplabel").textContent = `from A (${fmt(state.a[0])}, ${fmt(state.a[1])}) to B (${fmt(state.b[0])}, ${fmt(state.b[1])}); a click starts again`;
  } else {
    $("striplabel").textContent = state.a ? "click a second point for the interpolation from A" : "click the plane to pin a point, click again for the interpolation";
  }
  $("about").textContent = `${m.name}: ${m.path}` + (m.epochs != null ? `, ${m.epochs} epochs` : "") +
    `. Background: the latent means of the ${m.labels.length.toLocaleString("en")} test images, coloured by digit` +
    (m.conditional ? ` (digit ${state.digit} in front).` : ".");
}

// --- the hash: model=NAME, z=Z1,Z2, digit=D, a=Z1,Z2, b=Z1,Z2, dump --------------------------------
function readHash() {
  const q = {};
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    if (!part) continue;
    const i = part.indexOf("=");  // by hand: URLSearchParams would read the + of 1e+2 as a space
    q[decodeURIComponent(i < 0 ? part : part.slice(0, i))] = i < 0 ? "" : decodeURIComponent(part.slice(i + 1));
  }
  return q;
}

function point(text, name) {
  const parts = text.split(",");
  const z = parts.map(s => s.trim() === "" ? NaN : Number(s));
  if (z.length !== 2 || !z.every(Number.isFinite)) throw new Error(`${name}=${text} is not two numbers Z1,Z2`);
  return z;
}

function applyHash() {
  const q = readHash();
  $("message").textContent = "";
  let dump = "";
  try {
    if ("model" in q) {
      if (!MODELS[q.model]) throw new Error(`this page has no ${q.model}; it holds ${Object.keys(MODELS).join(" and ")}`);
      state.model = q.model;
    }
    if ("digit" in q) {
      const d = Number(q.digit);
      if (!(Number.isInteger(d) && d >= 0 && d <= 9) || q.digit.trim() === "") throw new Error(`digit=${q.digit} is not one of 0-9`);
      state.digit = d;
    }
    if ("z" in q) state.z = point(q.z, "z");
    state.a = "a" in q ? point(q.a, "a") : null;
    state.b = "b" in q && state.a ? point(q.b, "b") : null;
    state.hover = null;
    if ("dump" in q) dump = Array.from(decode(MODELS[state.model], state.z, state.digit), v => v.toPrecision(9)).join(",");
  } catch (e) {
    $("message").textContent = e.message;
    dump = "error: " + e.message;
  }
  render();
  if ("dump" in q) {
    $("dump").textContent = dump;
    // where the plane and the digit are, in CSS pixels, for a test that looks at a screenshot
    const where = id => { const r = $(id).getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
    let layout = $("layout");
    if (!layout) { layout = document.createElement("pre"); layout.id = "layout"; document.body.appendChild(layout); }
    layout.textContent = JSON.stringify({plane: where("plane"), digit: where("digit"), strip: where("strip")});
  }
}

// After a click or a button, the hash says what is shown, so that the address can be shared.
function writeHash() {
  const r = v => +v.toFixed(4);
  let h = `model=${state.model}&z=${shown().map(r)}` + (MODELS[state.model].conditional ? `&digit=${state.digit}` : "");
  if (state.a) h += `&a=${state.a.map(r)}`;
  if (state.b) h += `&b=${state.b.map(r)}`;
  history.replaceState(null, "", "#" + h);
}

// --- the controls ------------------------------------------------------------------------------
for (const name of Object.keys(MODELS)) {
  const b = document.createElement("button");
  b.textContent = name;
  b.onclick = () => { state.model = name; render(); writeHash(); };
  $("models").appendChild(b);
}
if (Object.keys(MODELS).length < 2) $("models").style.display = "none";
for (let d = 0; d < 10; d++) {
  const b = document.createElement("button");
  b.textContent = d;
  b.onclick = () => { state.digit = d; render(); writeHash(); };
  $("digits").appendChild(b);
}
$("legend").innerHTML = COLOURS.map((c, d) => `<span><i style="background:${c}"></i>${d}</span>`).join("");

function latentAt(event) {
  const r = plane.getBoundingClientRect();
  return toLatent(MODELS[state.model], (event.clientX - r.left) / r.width * S, (event.clientY - r.top) / r.height * S);
}
plane.addEventListener("pointermove", e => { state.hover = latentAt(e); render(); });
plane.addEventListener("pointerdown", e => { state.hover = latentAt(e); render(); });  // a touch shows its point at once
plane.addEventListener("pointerleave", () => { state.hover = null; render(); });
plane.addEventListener("click", e => {
  const z = latentAt(e);
  if (!state.a || state.b) { state.a = z; state.b = null; } else state.b = z;
  state.z = z;
  render(); writeHash();
});
window.addEventListener("hashchange", applyHash);
applyHash();
</script>
</body>
</html>
"""


if __name__ == "__main__":
    utils.main(main)
