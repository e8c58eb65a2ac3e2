"""``pddpm`` sub-commands of this stage (registered by :mod:`pddpm_monai.cli`)."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands (none yet)."""
