"""The README's commands: the first two lines are the install+demo and install+test commands, every
``pddpm`` command line parses with the real CLI, and every bundle config it names exists."""

from __future__ import annotations

import re
import shlex

import pytest

from pddpm_monai.cli import build_parser
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
BUNDLE = REPO_ROOT / "bundles" / "pddpm_brain_uad"


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _command_lines() -> list[str]:
    lines = []
    for block in _bash_blocks():
        joined = block.replace("\\\n", " ")
        lines += [line.split("#")[0].strip() for line in joined.splitlines() if line.strip()]
    return lines


def test_readme_opens_with_the_demo_and_the_tests():
    first = _bash_blocks()[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].split("#")[0].strip().endswith("pddpm demo --out demo_output")
    assert "pip install -e ." in first[0] and "python -m pytest" in first[1]


@pytest.mark.parametrize("line", [c for c in _command_lines() if "pddpm " in c and "pip install" not in c])
def test_every_pddpm_command_in_the_readme_parses(line):
    for part in line.split("&&"):
        words = shlex.split(part)
        if words and words[0] == "pddpm":
            args = build_parser().parse_args(words[1:])  # SystemExit(2) on an unknown command or option
            assert callable(args.func)


def test_bundle_configs_named_in_the_readme_exist():
    named = set(re.findall(r"configs/(\w+\.json)", README.read_text(encoding="utf-8")))
    assert {"train.json", "evaluate.json", "inference.json", "multi_gpu_train.json"} <= named
    missing = sorted(n for n in named if not (BUNDLE / "configs" / n).is_file())
    assert not missing, missing
