"""The ``pddpm`` entry point: process settings restored, output that survives an ASCII terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import SimpleITK as sitk
import torch

from pddpm_monai import cli
from pddpm_monai.inferers.precision import get_inference_precision
from pddpm_monai.threads import THREADS_ENV


def test_main_restores_threads_environment_and_precision(monkeypatch, tmp_path):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = (
        torch.get_num_threads(),
        sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        get_inference_precision(),
    )
    seen = []
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["demo"].set_defaults(
        func=lambda args: seen.append(
            (torch.get_num_threads(), os.environ.get(THREADS_ENV), get_inference_precision())
        )
    )
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    wanted = before[0] + 1
    assert cli.main(["demo", "--out", str(tmp_path), "--threads", str(wanted), "--precision", "bf16"]) == 0
    assert seen == [(wanted, str(wanted), "bf16")]  # the command ran with what was asked
    after = (
        torch.get_num_threads(),
        sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        get_inference_precision(),
    )
    assert after == before and THREADS_ENV not in os.environ


def test_ascii_stream_gets_escapes_not_an_error(monkeypatch):
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", stream)
    cli._printable_streams()
    print("Dice 61.0 \u00b1 2.0", end="")
    stream.flush()
    assert raw.getvalue() == b"Dice 61.0 \\xb1 2.0"


def test_an_ascii_locale_prints_escapes():
    env = {**os.environ, "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pddpm_monai import cli; sys.stdout.reconfigure(errors='strict');"
            " cli._printable_streams(); print('\\u00b1')",
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert proc.stdout.strip() == b"\\xb1"
