"""The ``pddpm`` command: a thin dispatcher over the stage packages.

Each stage package exposes ``add_commands(subparsers)`` in its ``commands`` module; this module only
collects them, parses, and turns :class:`~pddpm_monai.utils.PddpmError` into a one-line message on
stderr with a non-zero exit code (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence

import SimpleITK as sitk
import torch

from pddpm_monai import __version__
from pddpm_monai.data import commands as data_commands
from pddpm_monai.data.synthetic import commands as synthetic_commands
from pddpm_monai.engines import commands as engines_commands
from pddpm_monai.evaluation import ablation
from pddpm_monai.evaluation import commands as evaluation_commands
from pddpm_monai.inferers.precision import PRECISIONS, get_inference_precision, set_inference_precision
from pddpm_monai.pipeline import commands as pipeline_commands
from pddpm_monai.threads import THREADS_ENV, set_threads
from pddpm_monai.utils import EXIT_USER_ERROR, PddpmError

#: the modules whose ``add_commands(subparsers)`` register the ``pddpm`` verbs, in help order
COMMAND_MODULES = (
    synthetic_commands,  # synth
    data_commands,  # preprocess, splits, fetch-atlas
    engines_commands,  # train, reconstruct
    evaluation_commands,  # evaluate, table
    ablation,  # ablate
    pipeline_commands,  # detect, demo
)

#: the verbs that compute on the CPU and take ``--threads`` (see :mod:`pddpm_monai.threads`)
THREADED_COMMANDS: tuple[str, ...] = (
    "preprocess",
    "train",
    "reconstruct",
    "evaluate",
    "ablate",
    "detect",
    "demo",
)

#: the verbs that run diffusion inference and take ``--precision`` (see :mod:`pddpm_monai.inferers.precision`)
PRECISION_COMMANDS: tuple[str, ...] = ("reconstruct", "evaluate", "ablate", "detect", "demo")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (no usage dump), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``pddpm`` argument parser with every stage's sub-commands."""
    parser = _Parser(prog="pddpm", description="Patched diffusion models for brain MRI anomaly detection.")
    parser.add_argument("--version", action="version", version=f"pddpm-monai {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    for name in THREADED_COMMANDS:
        sub.choices[name].add_argument(
            "--threads",
            type=engines_commands.positive_int,
            default=None,
            help="CPU threads per process (default: $OMP_NUM_THREADS, else the usable cores / workers)",
        )
    for name in PRECISION_COMMANDS:
        sub.choices[name].add_argument(
            "--precision",
            choices=PRECISIONS,
            default="auto",
            help="network precision at inference: auto (fp32, channels-last on the CPU; default), "
            "fp32 (the reference), bf16 (autocast; fast only with AVX512-BF16/AMX or a GPU)",
        )
    return parser


def _apply_threads(args: argparse.Namespace) -> None:
    """Set this process's threads; an explicit ``--threads`` also goes to worker processes.

    ``--threads N`` is exported as ``OMP_NUM_THREADS=N`` so that the processes a command starts
    (preprocessing workers) use ``N`` threads each, as if the user had exported it.
    """
    if args.threads:
        os.environ[THREADS_ENV] = str(args.threads)
    set_threads(args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pddpm`` console script.

    The process-wide settings a command changes (torch and ITK threads, ``OMP_NUM_THREADS``, the
    inference precision) are restored when it returns, so that calling ``main`` from Python leaves
    the caller's process as it was. On a terminal that cannot show a character (an ASCII locale),
    it is printed as an escape rather than failing.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    _printable_streams()
    saved = (
        torch.get_num_threads(),
        sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        os.environ.get(THREADS_ENV),
        get_inference_precision(),
    )
    try:
        return _run(args)
    finally:
        threads, itk_threads, env_threads, precision = saved
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
        if env_threads is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = env_threads
        set_inference_precision(precision)


def _printable_streams() -> None:
    """Print what an ASCII terminal cannot show (the tables' ``±``) as escapes instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper):
            continue
        try:
            "\u00b1".encode(stream.encoding)
        except (UnicodeEncodeError, LookupError):
            stream.reconfigure(errors="backslashreplace")


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error becomes one line on stderr and a non-zero code."""
    try:
        if hasattr(args, "threads"):
            _apply_threads(args)
        if hasattr(args, "precision"):
            set_inference_precision(args.precision)
        code = args.func(args)
    except PddpmError as err:
        if args.debug:
            raise
        sys.stderr.write(f"pddpm {args.command}: error: {err}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"pddpm {args.command}: interrupted\n")
        return 130
    except OSError as err:
        if args.debug:
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        sys.stderr.write(f"pddpm {args.command}: error: {where}{err.strerror or err}\n")
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
