"""Keeping runs: a run's folder, its flags and the --resume rule, atomic checkpoints, reading them, finding runs.

A run lives in RUNS_DIR/MODEL/RUN_NAME/ (MODEL is VAE or CVAE): run.json (the flags it was started with,
when, what ran, and each resume's changes), TensorBoard's event files, and checkpoint.pt, written atomically
at the end of every epoch; its sample grids go to OUT_DIR/RUN_NAME/NNN.png.

The --resume rule: a flag given on the command line wins; every other flag is the run's own: those it was
started with, as later resumes changed them; a new run takes the defaults. The latent size, --arch,
--binarize, --val and EMA on or off cannot change in a run.

The run a script reads when none is named (choose_runs): for each model, the newest run you trained (by
its start time), else the committed run `reference`. "You trained" means not committed to this repository:
runs that git tracks are ours, and a script picks them only by name, or when you have trained none.
"""

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime

import torch
import torch.distributed as dist

from cli import UserError

RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # with --val: the weights of the epoch with the lowest validation -ELBO
EVENTS = "events.out.tfevents.*"
DEFAULT_RUN = "reference"  # the committed run a script reads when you have trained none
SCRIPTS = {"VAE": "train.py", "CVAE": "train_CVAE.py"}  # the models, and the script that trains each
NOT_SAVED = ("runs_dir", "run_name", "resume", "overwrite")  # where to find the run, and what to do with it
FIXED = ("latent_dim", "arch", "binarize", "val")  # a resumed run cannot change these (nor EMA on or off)


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
    """Write to a temporary file, then rename: a kill at any moment leaves the old file or the new one, and a write
    that fails (a full disk) leaves the old one and no temporary file."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            if isinstance(state, bytes):
                f.write(state)
            else:
                torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_weights(path, device="cpu", what="checkpoint", missing="", remedy=""):
    """What torch.load finds in the file, with weights_only=True, so that loading runs no code; a missing or
    damaged file is a one-line error, FileNotFoundError ("no WHAT at PATH; MISSING") or ValueError (... REMEDY)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}; {missing}") from None
    except Exception as e:
        raise ValueError(
            f"{path} is not a readable {what} ({type(e).__name__}); it may be truncated or corrupt: {remedy}"
        ) from None


def read_checkpoint(path, device="cpu"):
    """The dict a checkpoint.pt holds, checked: the one reader of the checkpoints train.py writes."""
    missing = "train one with train.py or train_CVAE.py, or pass another path"
    checkpoint = read_weights(path, device, "checkpoint", missing, remedy="pass another checkpoint, or train again")
    if isinstance(checkpoint, dict) and "model_state" in checkpoint:  # written before the keys were renamed
        checkpoint["weights"] = checkpoint.pop("model_state")
        if "train_state" in checkpoint:
            checkpoint["trained_weights"] = checkpoint.pop("train_state")
    if not isinstance(checkpoint, dict) or checkpoint.get("model") not in SCRIPTS or "weights" not in checkpoint:
        raise ValueError(
            f"{path} is not a VAE-pytorch checkpoint; pass a checkpoint.pt written by train.py or train_CVAE.py"
        )
    return checkpoint


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


# --- a training run -------------------------------------------------------------------------------


def open_run(model_name, defaults, given):
    """The Run that train.py's flags ask for, checked: its folder, its flags under the --resume rule, and on
    --resume its run.json and checkpoint. It only reads: nothing is written until Run.start."""
    runs_dir, run_name = given.get("runs_dir", defaults["runs_dir"]), given.get("run_name")
    if given.get("resume") and given.get("overwrite"):
        raise UserError("--resume continues a run and --overwrite empties it: pass one of them")
    if given.get("resume") and not run_name:
        raise UserError("--resume needs the --run-name of the run to continue")
    run_name = run_name or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = os.path.join(runs_dir, model_name, run_name)
    record = read_run(run_dir) if os.path.isdir(run_dir) else None
    checkpoint = None
    if given.get("resume"):
        if os.path.exists(os.path.join(run_dir, CHECKPOINT)):
            checkpoint = read_checkpoint(os.path.join(run_dir, CHECKPOINT))
        if not record and not checkpoint:
            raise UserError(
                f"--resume: {run_dir} holds neither a checkpoint nor the flags of a run; "
                f"check --run-name and --runs-dir, or start a new run without --resume"
            )
        kind = (record or checkpoint)["model"]
        if kind != model_name:
            raise UserError(f"--resume: {run_dir} holds a {kind}, not a {model_name}; resume it with {SCRIPTS[kind]}")
        # runs from before run.json kept their flags in the checkpoint
        saved = current_flags(record) if record else {k: v for k, v in checkpoint["args"].items() if k in defaults}
        saved = {k: v for k, v in saved.items() if k in defaults and k not in NOT_SAVED}
        args = resumed_flags(defaults, given, saved)
        changed = {k: v for k, v in args.items() if k not in NOT_SAVED and saved.get(k, defaults[k]) != v}
        record = record or {"model": model_name, "started": time.time(), "flags": saved}
        record = dict(record, resumes=record.get("resumes", []) + [{"at": time.time(), "changed": changed}])
    else:
        args = {**defaults, **given}
        for folder in (run_dir, os.path.join(args["out_dir"], run_name)):
            if os.path.isdir(folder) and os.listdir(folder) and not args["overwrite"]:
                raise UserError(
                    f"{folder} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                    f"or choose another --run-name"
                )
        record = {
            "model": model_name,
            "started": time.time(),
            "flags": {k: v for k, v in args.items() if k not in NOT_SAVED},
        }
    args = argparse.Namespace(**dict(args, runs_dir=runs_dir, run_name=run_name))
    grid_dir = os.path.join(args.out_dir, run_name)
    if args.patience and not args.val:
        raise UserError("--patience stops on the validation -ELBO: pass --val N too (for instance --val 10000)")
    saved = checkpoint or {}
    return Run(
        model_name,
        run_dir,
        args,
        record,
        checkpoint,
        grid_dir,
        saved.get("epoch"),
        saved.get("best_epoch"),
        saved.get("best_val_loss"),
    )


def resumed_flags(defaults, given, saved):
    """A resumed run's flags under the rule above; `saved` are the run's own."""
    for flag in FIXED:
        if flag in given and given[flag] != saved.get(flag, defaults[flag]):
            raise UserError(
                f"--resume: --{flag.replace('_', '-')} {given[flag]} differs from the run's "
                f"{saved.get(flag, defaults[flag])}; drop it, or start a new run"
            )
    if "ema" in given and bool(given["ema"]) != bool(saved.get("ema")):
        was = "with" if saved.get("ema") else "without"
        raise UserError(
            f"--resume: the run was trained {was} --ema; EMA cannot be turned {'off' if saved.get('ema') else 'on'} "
            f"in a run: drop --ema, or start a new run"
        )
    return {**defaults, **saved, **given}


@dataclasses.dataclass
class Run:
    """A training run: its model, folder `dir`, flags `args`, run.json (`record`), the checkpoint it resumes from,
    its grid folder, the epoch of its newest checkpoint, and with --val the epoch of the lowest validation -ELBO
    and that -ELBO (epochs counted from 0)."""

    model_name: str
    dir: str
    args: argparse.Namespace
    record: dict
    checkpoint: dict | None
    grid_dir: str
    last_saved: int | None
    best_epoch: int | None
    best_val_loss: float | None

    def restore(self, model, optimizer, average):
        """Load the checkpoint a resumed run continues from into the model, its average and the optimizer;
        the epoch to start from (0 for a new run)."""
        if not self.checkpoint:
            return 0
        try:
            model.load_state_dict(self.checkpoint.get("trained_weights", self.checkpoint["weights"]))
            if average:
                average.load_state_dict(self.checkpoint["average_state"])
            optimizer.load_state_dict(self.checkpoint["optimizer_state"])
        except (RuntimeError, KeyError, ValueError):
            raise UserError(
                f"--resume: {os.path.join(self.dir, CHECKPOINT)} does not fit the {self.model_name} of its flags "
                f"(latent size {self.args.latent_dim}); it is damaged or from other code: start a new run"
            ) from None
        for group in optimizer.param_groups:  # the saved state brings the old hyperparameters: the run's flags win
            group["weight_decay"] = self.args.weight_decay
        return self.checkpoint["epoch"] + 1

    def start(self, start_epoch, device, bf16):
        """The run is valid: only now are its folders emptied (--overwrite) and made, and run.json written, with
        what ran. Returns the SummaryWriter of its logs (None in the processes under torchrun that do not write)."""
        if dist.is_initialized() and dist.get_rank() > 0:  # under torchrun the first process writes
            return None
        from torch.utils.tensorboard import SummaryWriter  # here: the scripts that only read runs need not load it

        args = self.args
        if args.resume and not self.checkpoint:
            print(f"{self.dir} stopped before its first checkpoint: starting it again from epoch 1 with its own flags")
        if args.overwrite:
            for folder in (self.dir, self.grid_dir):
                if os.path.isdir(folder):
                    shutil.rmtree(folder)
        writable_dir(self.dir, "--runs-dir")
        writable_dir(self.grid_dir, "--out-dir")
        try:  # what ran, beside the flags that asked for it (--device auto, --bf16 auto)
            git = ["git", "rev-parse", "HEAD"]
            here = os.path.dirname(os.path.abspath(__file__))
            commit = subprocess.run(git, cwd=here, capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
        ran = {"device": str(device), "bf16": bf16, "torch": torch.__version__, "git_commit": commit}
        (self.record["resumes"][-1] if self.record.get("resumes") else self.record).update(epoch=start_epoch, ran=ran)
        save_atomic(json.dumps(self.record, indent=2).encode() + b"\n", os.path.join(self.dir, RUN_FILE))
        # purge_step: a reader drops what an interrupted attempt logged from the first epoch this one redoes
        return SummaryWriter(self.dir, purge_step=start_epoch if args.resume else None)

    def save(self, epoch, model, optimizer, average, test_loss, val_loss=None):
        """Write the epoch's checkpoint atomically, with its test (and validation) -ELBO, and with --val best.pt
        where the validation -ELBO is the lowest yet. "weights" are the weights that are tested and sampled: the
        moving average with --ema, else the trained ones."""
        state = {
            "model": self.model_name,
            "args": vars(self.args),
            "epoch": epoch,
            "weights": (average.module if average else model).state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "test_loss": test_loss,
        }
        if val_loss is not None:
            state["val_loss"] = val_loss
        if not all(torch.isfinite(w).all() for w in state["weights"].values() if w.is_floating_point()):
            raise FloatingPointError(f"the weights became non-finite in epoch {epoch + 1}")
        if average:
            state.update(trained_weights=model.state_dict(), average_state=average.state_dict())
        writes = not dist.is_initialized() or dist.get_rank() == 0  # under torchrun the first process writes
        if val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss):
            self.best_epoch, self.best_val_loss = epoch, val_loss
            if writes:  # before checkpoint.pt: a kill between the two redoes this epoch, and writes the same again
                best = {k: state[k] for k in ("model", "args", "epoch", "weights", "test_loss", "val_loss")}
                self.write(best, BEST)
        state.update(best_epoch=self.best_epoch, best_val_loss=self.best_val_loss)
        if writes:
            self.write(state, CHECKPOINT)
        self.last_saved = epoch  # in every process, so that each tells the same story when it stops

    def write(self, state, name):
        """save_atomic into the run's folder; a failed write (a full disk) is one line that says what is kept."""
        try:
            save_atomic(state, os.path.join(self.dir, name))
        except OSError as e:
            kept = (
                "nothing was saved yet"
                if self.last_saved is None
                else f"the checkpoint of epoch {self.last_saved + 1} is kept"
            )
            raise UserError(
                f"could not write {os.path.join(self.dir, name)} ({e.strerror or e}); {kept}: make room, then "
                f"continue with {self.resume_command()}"
            ) from None

    def out_of_patience(self, epoch):
        """Whether --patience stops the run after `epoch`: no lower validation -ELBO for --patience epochs."""
        return bool(self.args.patience) and epoch - self.best_epoch >= self.args.patience

    def resume_command(self):
        runs_dir = f" --runs-dir {self.args.runs_dir}" if self.args.runs_dir != "runs" else ""
        return f"python {SCRIPTS[self.model_name]} --run-name {self.args.run_name}{runs_dir} --resume"

    @contextlib.contextmanager
    def stopping_cleanly(self):
        """Around the epochs: Ctrl-C, or a non-finite loss (FloatingPointError), ends the run with one line that
        says which checkpoint is kept and how to go on."""
        try:
            yield
        except KeyboardInterrupt:
            kept = self.last_saved  # counted from 0
            saved = f"the checkpoint of epoch {kept + 1} is kept" if kept is not None else "nothing was saved yet"
            epoch = 1 if kept is None else kept + 2
            raise UserError(f"interrupted in epoch {epoch}; {saved}: continue with {self.resume_command()}") from None
        except FloatingPointError as e:
            if self.last_saved is None:
                raise UserError(
                    f"{e}; training stopped before any checkpoint: start again with a lower --lr and --overwrite"
                ) from None
            raise UserError(
                f"{e}; training stopped and the checkpoint of epoch {self.last_saved + 1} in {self.dir} is kept: "
                f"continue with {self.resume_command()} --lr SMALLER"
            ) from None


# --- finding runs ---------------------------------------------------------------------------------


def started(run_dir):
    """When a run started: from its run.json, else from the name of its first event file (its creation time), else 0."""
    record = read_run(run_dir)
    if record and "started" in record:
        return record["started"]
    names = map(os.path.basename, glob.glob(os.path.join(run_dir, EVENTS)))
    return min((int(name.split(".")[3]) for name in names if name.split(".")[3].isdigit()), default=0)


def committed(runs_dir):
    """The run folders under runs_dir that git tracks (none where runs_dir is not in a git checkout)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=runs_dir, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    if listed.returncode:
        return set()
    paths = [path.split("/") for path in listed.stdout.decode().split("\0")]
    return {os.path.normpath(os.path.join(runs_dir, *parts[:2])) for parts in paths if len(parts) > 2}


def default_run(runs):
    """Of one model's run folders: the newest run you trained, else `reference`, else the newest committed one."""
    ours = committed(os.path.dirname(os.path.dirname(runs[0])))
    yours = [run for run in runs if os.path.normpath(run) not in ours]
    reference = [run for run in runs if os.path.basename(run) == DEFAULT_RUN]
    return max(yours or reference or runs, key=lambda run: (started(run), run))


def choose_runs(runs_dir="runs", run_name=None, paths=None, need=CHECKPOINT):
    """What a script works on: [(model name or None, path)].

    `need` is CHECKPOINT (the paths are checkpoint files) or EVENTS (the paths are run folders with logs).
    The runs are `paths` if given (a checkpoint's run folder will do), else RUNS_DIR/{VAE,CVAE}/RUN_NAME,
    else each model's default run (default_run).
    """

    def has(run):
        if need == CHECKPOINT:
            return os.path.exists(os.path.join(run, CHECKPOINT))
        return bool(glob.glob(os.path.join(run, EVENTS)))

    def model_of(run):
        name = os.path.basename(os.path.dirname(os.path.abspath(run)))
        return name if name in SCRIPTS else None

    def result(runs):
        return [(model_of(run), os.path.join(run, CHECKPOINT) if need == CHECKPOINT else run) for run in runs]

    what = "a checkpoint" if need == CHECKPOINT else "logs"
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
        runs = [run for run in (os.path.join(runs_dir, m, run_name) for m in SCRIPTS) if has(run)]
        if not runs:
            raise UserError(
                f"no run named {run_name} with {what} under {runs_dir}/VAE/ or {runs_dir}/CVAE/; "
                f"check --run-name and --runs-dir"
            )
        return result(runs)
    chosen = []
    for m in SCRIPTS:
        runs = [run for run in glob.glob(os.path.join(runs_dir, m, "*")) if os.path.isdir(run) and has(run)]
        if runs:
            chosen.append(default_run(runs))
    if not chosen:
        raise UserError(
            f"no {'checkpoint' if need == CHECKPOINT else 'runs'} under {runs_dir}/VAE/ or {runs_dir}/CVAE/; "
            f"train one with python train.py" + (" (or pass --checkpoint)" if need == CHECKPOINT else "")
        )
    return result(chosen)


def all_runs(runs_dir):
    """Every run folder with logs under RUNS_DIR/{VAE,CVAE}/, as [(model name, folder)], sorted."""
    return [
        (m, run)
        for m in SCRIPTS
        for run in sorted(glob.glob(os.path.join(runs_dir, m, "*")))
        if glob.glob(os.path.join(run, EVENTS))
    ]
