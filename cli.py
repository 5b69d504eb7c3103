"""How every script meets its user: flags declared once, one-line errors, and what --device and --bf16 mean.

A script declares each flag once, as NAME=(default, kind, help) in a dict; parser() makes the argparse
parser from it, whose --help shows every default, and parse() gives (args, given): every flag's value,
and the flags that the command line gave (train.py's --resume rule needs to know which).
"""

import argparse
import contextlib
import ctypes
import math
import sys

import torch
import torch.distributed


class UserError(Exception):
    """A mistake of the user's: one_line_errors() prints its message as one line and exits non-zero."""


# --- flags ----------------------------------------------------------------------------------------


def number(kind, low=0, low_ok=False, high=None):
    """An argparse type: a finite number of the given kind above low (or at it if low_ok) and below high."""

    def parse_number(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (value == low and not low_ok) or (high is not None and value >= high):
            bounds = f"{'>=' if low_ok else '>'} {low}" + (f" and < {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse_number


DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"
# the flags of the scripts that read trained runs, and pick them as runs.choose_runs says
RUN_FLAGS = dict(
    runs_dir=("runs", str, "where train.py writes RUNS_DIR/MODEL/RUN_NAME/"),
    run_name=(
        None,
        str,
        "use RUNS_DIR/VAE/RUN_NAME and RUNS_DIR/CVAE/RUN_NAME, whichever exist (default: the newest run you "
        "trained of each model, else the committed run reference)",
        dict(group="which"),
    ),
    checkpoint=(
        None,
        str,
        "use this checkpoint.pt or run folder; repeatable",
        dict(action="append", metavar="PATH", group="which"),
    ),
    device=("cpu", str, DEVICE_HELP),
    data_dir=("data", str, "the folder that holds MNIST/raw/"),
)


def parser(description, flags, defaults=None, **argparse_kwargs):
    """An ArgumentParser with --NAME for each NAME=(default, kind, help[, more]) of `flags` (NAME's underscores
    as dashes, or more's option), its default changed where `defaults` gives one.

    kind is a type (str, int, a number()), a list of choices, bool (--NAME and --no-NAME), or "switch" (--NAME
    alone, off); `more` is a dict of what else add_argument takes (metavar, action="append"...), and
    group="G" puts the flag in the mutually exclusive group G. --help shows each default, and an error is one
    line, without the usage."""
    p = argparse.ArgumentParser(description=description, **argparse_kwargs)
    p.error = lambda message: exit_with(f"{p.prog}: error: {message} (see --help)")
    groups, values = {}, {}
    for name, (default, kind, help, *more) in flags.items():
        kw = dict(more[0]) if more else {}
        default = (defaults or {}).get(name, default)
        group = kw.pop("group", None)
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind == "switch":
            kw["action"] = "store_true"
        elif isinstance(kind, (list, tuple, dict)):
            kw["choices"] = list(kind)
        elif kind is not str:
            kw["type"] = kind
        if default is not None and default is not False and kw.get("action") != "append":
            help += f" (default: {default})"
        if group and group not in groups:
            groups[group] = p.add_mutually_exclusive_group()
        target = groups[group] if group else p
        option = kw.pop("option", "--" + name.replace("_", "-"))
        target.add_argument(option, dest=name, help=help, **kw)  # None: not given
        values[name] = default
    p.set_defaults(_defaults=values)
    return p


def parse(p, argv=None):
    """(args, given): every flag's value (its default where the command line gave none), and the flags that the
    command line gave, as a dict; p is what parser() made (or has its subcommands)."""
    parsed = vars(p.parse_args(argv))
    defaults = parsed.pop("_defaults")
    given = {k: v for k, v in parsed.items() if v is not None and k in defaults}
    others = {k: v for k, v in parsed.items() if k not in defaults}  # a subcommand's name, say
    return argparse.Namespace(**{**defaults, **others, **given}), given


# --- errors ---------------------------------------------------------------------------------------


def exit_with(line):
    """Exit with status 1 after writing `line` to stderr in one write, so that the lines of processes
    sharing a stderr (torchrun) never run into each other; sys.exit(line) writes the newline separately."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.exit(1)


@contextlib.contextmanager
def one_line_errors():
    """Around a script's work: a user's mistake (a wrong flag or path, a damaged file, out of memory, Ctrl-C)
    becomes one line on stderr and a non-zero exit, not a traceback."""
    try:
        yield
    except (UserError, OSError, ValueError) as e:
        exit_with(f"error: {e}")
    except torch.OutOfMemoryError:
        exit_with("error: out of memory on the device; lower --batch-size (or the number of images or samples at once)")
    except KeyboardInterrupt:
        exit_with("interrupted")
    finally:
        if torch.distributed.is_initialized():  # torchrun's processes end together
            torch.distributed.destroy_process_group()


# --- the machine ----------------------------------------------------------------------------------


def pick_device(name="auto"):
    """The torch.device that --device names; auto: cuda, then mps, then cpu."""
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
    """What --bf16 means on this device: on or off as given, or, for auto (None in old runs), whether the device
    multiplies bfloat16 natively; elsewhere bfloat16 is emulated, and slower than float32."""
    if flag not in ("auto", None):
        return flag
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # ATEN_CPU_CAPABILITY=avx2 (and the like) turns AVX-512 off, and bfloat16 with it
        has_avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        return has_avx512 and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


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
