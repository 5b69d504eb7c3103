"""What the scripts share: command-line conventions, devices, files, and finding runs.

A run lives in RUNS_DIR/MODEL/RUN_NAME/ (MODEL is VAE or CVAE): run.json (the flags it
was started with and when), TensorBoard's event files, and checkpoint.pt.
"""

import argparse
import ctypes
import glob
import json
import os
import sys
import tempfile

import torch

from models import MODELS, model_from, read_checkpoint

RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.pt"
EVENTS = "events.out.tfevents.*"


# --- the command line ---------------------------------------------------------------------------

# the defaults of the flags that add_run_flags, add_device_flag and add_data_flag give
RUN_DEFAULTS = dict(runs_dir="runs", run_name=None, checkpoint=None, device="cpu", data_dir="data")


class UserError(Exception):
    """A mistake of the user's: main() prints its message as one line and exits non-zero."""


def parser(description, defaults):
    """An ArgumentParser whose --help shows the value of `defaults` for each flag, and whose errors are one line."""

    class Help(argparse.HelpFormatter):
        def _get_help_string(self, action):
            if action.dest in defaults and defaults[action.dest] is not None and defaults[action.dest] is not False:
                return f"{action.help} (default: {defaults[action.dest]})"
            return action.help

    p = argparse.ArgumentParser(description=description, formatter_class=Help, argument_default=None)
    p.error = lambda message: exit_with(f"{p.prog}: error: {message} (see --help)")  # one line, no usage dump
    return p


def parse(p, defaults, argv=None):
    """(args, given): the flags with `defaults` filled in, and the flags that the command line gave."""
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    return argparse.Namespace(**{**defaults, **given}), given


def number(kind, low=0, low_ok=False, high=None):
    """An argparse type: a number of the given kind above low (or at it if low_ok) and below high."""

    def parse_number(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low or (value == low and not low_ok) or (high is not None and value >= high):
            bounds = f"{'>=' if low_ok else '>'} {low}" + (f" and < {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse_number


def add_run_flags(p, what="checkpoint"):
    """--runs-dir, and --run-name or --checkpoint (or --run, for logs): which runs a script works on."""
    p.add_argument("--runs-dir", help="where train.py writes RUNS_DIR/MODEL/RUN_NAME/")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--run-name",
        help="use RUNS_DIR/VAE/RUN_NAME and RUNS_DIR/CVAE/RUN_NAME, whichever exist "
        "(default: the newest run of each model, by the time it started)",
    )
    if what == "checkpoint":
        which.add_argument(
            "--checkpoint", action="append", metavar="PATH", help="use this checkpoint.pt or run folder; repeatable"
        )
    else:
        which.add_argument(
            "--run", action="append", metavar="DIR", help="use this run folder, e.g. runs/VAE/NAME; repeatable"
        )


def add_device_flag(p):
    p.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")


def add_data_flag(p):
    p.add_argument("--data-dir", help="the folder that holds MNIST/raw/")


def exit_with(line):
    """Exit with status 1 after writing `line` to stderr in one write, so that the lines of processes
    sharing a stderr (torchrun) never run into each other; sys.exit(line) writes the newline separately."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.exit(1)


def main(function):
    """Run a script's main function; a user's mistake becomes one line on stderr and a non-zero exit."""
    reuse_freed_memory()
    try:
        function()
    except (UserError, OSError, ValueError) as e:
        exit_with(f"error: {e}")
    except torch.OutOfMemoryError:
        exit_with("error: out of memory on the device; lower --batch-size (or the number of images or samples at once)")
    except KeyboardInterrupt:
        exit_with("interrupted")


def reuse_freed_memory():
    """Have glibc's malloc keep freed blocks of up to 32 MB for reuse rather than give them back to the system.

    By default a block over 128 KB is mapped fresh from the system each time, and the page faults of first
    writing it are paid again: each training step's new weight gradients (800 KB) made the decoder's
    weight-gradient matmul run at half speed, about a tenth of a float32 CPU epoch. Numbers are unchanged.
    Nothing happens where the C library is not glibc (macOS, Windows, musl)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest allowed value
    mallopt(M_TRIM_THRESHOLD, 2**30)  # keep up to 1 GB of free memory at the top of the heap


# --- devices --------------------------------------------------------------------------------------


def pick_device(name="auto"):
    if name == "auto":
        return torch.device(
            "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise UserError(
            f"--device {name} is not available on this machine; use --device cpu, or auto to pick what is there"
        )
    return device


def use_bf16(flag, device):
    """What --bf16 means on this device: True or False as given, or for "auto" (and unset) whether it is native here."""
    return native_bf16(device) if flag in ("auto", None) else flag


def native_bf16(device):
    """Whether this device multiplies bfloat16 natively; elsewhere bfloat16 is emulated, and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # ATEN_CPU_CAPABILITY=avx2 (and the like) turns AVX-512 off, and bfloat16 with it
        has_avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        return has_avx512 and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


# --- files ----------------------------------------------------------------------------------------


def writable_dir(path, flag):
    """Make the folder and check that a file can be written in it, before any long work."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise UserError(f"cannot write to {flag} {path} ({e.strerror}); choose a folder you can write to") from None
    return path


def save_atomic(state, path):
    """Write to a temporary file, then rename: a kill at any moment leaves the old file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        if isinstance(state, bytes):
            f.write(state)
        else:
            torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def binarized(binarize):
    """Whether a run's --binarize flag means binarised images (runs from before the flag have None: grey levels)."""
    return binarize == "dynamic"


# --- runs -----------------------------------------------------------------------------------------


def read_run(run_dir):
    """The run.json of a run folder, or None where it has none."""
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise UserError(f"{path} is not readable JSON; restore it, or start a new run with --overwrite") from None


def current_flags(record):
    """A run's flags now: those it was started with, as each resume changed them."""
    flags = dict(record["flags"])
    for resume in record.get("resumes", []):
        flags.update(resume["changed"])
    return flags


def write_run(run_dir, record):
    save_atomic(json.dumps(record, indent=2).encode() + b"\n", os.path.join(run_dir, RUN_FILE))


def started(run_dir):
    """When a run started: from its run.json, else from the name of its first event file (its creation time), else 0."""
    record = read_run(run_dir)
    if record and "started" in record:
        return record["started"]
    times = [
        int(name.split(".")[3])
        for name in map(os.path.basename, glob.glob(os.path.join(run_dir, EVENTS)))
        if name.split(".")[3].isdigit()
    ]
    return min(times, default=0)


def choose_runs(runs_dir="runs", run_name=None, paths=None, need=CHECKPOINT):
    """What a script works on: [(model name or None, path)].

    `need` is CHECKPOINT (the paths are checkpoint files) or EVENTS (the paths are run folders
    with logs). The runs are `paths` if given (a checkpoint's run folder will do), else
    RUNS_DIR/{VAE,CVAE}/RUN_NAME, else the newest run of each model by the time it started.
    """

    def has(run):
        return (
            os.path.exists(os.path.join(run, CHECKPOINT))
            if need == CHECKPOINT
            else bool(glob.glob(os.path.join(run, EVENTS)))
        )

    def model_of(run):
        name = os.path.basename(os.path.dirname(os.path.abspath(run)))
        return name if name in MODELS else None

    def result(runs):
        return [(model_of(run), os.path.join(run, CHECKPOINT) if need == CHECKPOINT else run) for run in runs]

    if paths:
        chosen = []
        for path in map(os.path.normpath, paths):
            if need == CHECKPOINT and os.path.isfile(path):
                chosen.append((None, path))
            elif not has(path):
                raise UserError(
                    f"{path}: no {'checkpoint.pt' if need == CHECKPOINT else 'TensorBoard logs'} there; "
                    f"pass a run folder like runs/VAE/NAME" + (" or a checkpoint file" if need == CHECKPOINT else "")
                )
            elif need == EVENTS and not model_of(path):
                raise UserError(f"{path}: the folder above it must be VAE or CVAE, as in runs/VAE/NAME")
            else:
                chosen += result([path])
        return chosen
    if run_name:
        runs = [run for run in (os.path.join(runs_dir, m, run_name) for m in MODELS) if has(run)]
        if not runs:
            raise UserError(
                f"no run named {run_name} with {'a checkpoint' if need == CHECKPOINT else 'logs'} under "
                f"{runs_dir}/VAE/ or {runs_dir}/CVAE/; check --run-name and --runs-dir"
            )
        return result(runs)
    newest = []
    for m in MODELS:
        runs = [run for run in glob.glob(os.path.join(runs_dir, m, "*")) if os.path.isdir(run) and has(run)]
        if runs:
            newest.append(max(runs, key=lambda run: (started(run), run)))
    if not newest:
        raise UserError(
            f"no {'checkpoint' if need == CHECKPOINT else 'runs'} under {runs_dir}/VAE/ or {runs_dir}/CVAE/; "
            f"train one with python train.py" + (" (or pass --checkpoint)" if need == CHECKPOINT else "")
        )
    return result(newest)


def all_runs(runs_dir):
    """Every run folder with logs under RUNS_DIR/{VAE,CVAE}/, as [(model name, folder)], sorted."""
    return [
        (m, run)
        for m in MODELS
        for run in sorted(glob.glob(os.path.join(runs_dir, m, "*")))
        if glob.glob(os.path.join(run, EVENTS))
    ]


def load_model(path, device="cpu"):
    """(model in eval mode, checkpoint dict) of a checkpoint.pt, with one-line errors."""
    checkpoint = read_checkpoint(path, device)
    return model_from(checkpoint, device, path), checkpoint
