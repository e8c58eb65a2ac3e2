"""``python -m pddpm_monai.bundle.check``: run a bundle with one-line errors for user mistakes.

``python -m monai.bundle run`` accepts any ``--key value`` (a misspelt key silently adds a new,
unused entry) and reports bad input as a deep ``ConfigParser`` traceback. This entry point takes
the same arguments and, before running,

- refuses override keys that the merged config files do not define (with the closest known keys);
- checks the data root of ``training`` / ``evaluating`` (exists, has ``splits/`` and the fold's
  split CSVs);

then runs ``monai.bundle.run`` and turns a :class:`~pddpm_monai.utils.PddpmError` raised anywhere
inside (missing checkpoint, bad scan, ...) into one line on stderr with exit code 2.

Examples::

    python -m pddpm_monai.bundle.check run training --config_file configs/train.json \\
        --data_root /data/root --fold 2 --patch_size 60
    python -m pddpm_monai.bundle.check check training --config_file configs/train.json --data_root ROOT
"""

from __future__ import annotations

import ast
import difflib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pddpm_monai.utils import EXIT_USER_ERROR, InputError, PddpmError

__all__ = ["RUN_OPTIONS", "parse_cli", "known_ids", "check_overrides", "check_data_root", "check", "main"]

#: options of ``monai.bundle.run`` that are not config overrides
RUN_OPTIONS = ("config_file", "meta_file", "logging_file", "args_file", "init_id", "final_id", "tracking")
#: run ids whose config reads a data root
DATA_ROOT_RUNS = ("training", "evaluating")
USAGE = "usage: python -m pddpm_monai.bundle.check {run,check} RUN_ID --config_file FILE [--key value ...]"


def _value(text: str) -> Any:
    """A command-line value as ``monai.bundle`` (fire) reads it: a Python literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_cli(argv: Sequence[str]) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """``[cmd, run_id, --key value ...]`` -> ``(cmd, run_id, run_options, overrides)``.

    Raises:
        InputError: for a malformed command line.
    """
    if len(argv) < 2 or argv[0] not in ("run", "check"):
        raise InputError(None, USAGE)
    cmd, run_id, tokens = argv[0], argv[1], iter(argv[2:])
    options: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for token in tokens:
        if not token.startswith("--"):
            raise InputError(token, f"expected --key value, got {token!r}; {USAGE}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            value = next(tokens, None)
        if value is None:
            raise InputError(token, "missing value")
        (options if key in RUN_OPTIONS else overrides)[key] = _value(value)
    if "config_file" not in options:
        raise InputError("--config_file", f"a config file is required; {USAGE}")
    return cmd, run_id, options, overrides


def _config_files(value: Any) -> list[str]:
    files = [value] if isinstance(value, str) else list(value)
    for f in files:
        if not Path(f).is_file():
            raise InputError(f, "config file not found")
    return [str(f) for f in files]


def known_ids(config: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every id of a config (``"train#trainer#max_epochs"``, list items as ``"train#handlers#0"``)."""
    ids = set()
    items = config.items() if isinstance(config, Mapping) else enumerate(config)
    for key, value in items:
        name = f"{prefix}{key}"
        ids.add(name)
        if isinstance(value, Mapping | list):
            ids |= known_ids(value, f"{name}#")
    return ids


def check_overrides(config_files: Sequence[str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The merged config of ``config_files``; refuse override keys it does not define.

    Raises:
        InputError: naming the config file(s) and the unknown key(s), with close matches.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=list(config_files))
    config = parser.get()
    ids = known_ids(config)
    unknown = [k for k in overrides if k not in ids]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(ids), n=2)
            hints.append(
                f"{key!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")
            )
        raise InputError(", ".join(config_files), f"unknown override key(s): {', '.join(hints)}")
    return config


def check_data_root(run_id: str, config: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Check the data root of a ``training`` / ``evaluating`` run (exists, ``splits/``, fold CSVs)."""
    if run_id not in DATA_ROOT_RUNS or "data_root" not in config:
        return
    from pddpm_monai.data.datalist import split_path

    root = overrides.get("data_root", config.get("data_root"))
    if root in (None, ""):
        raise InputError("--data_root", "no data root given: pass --data_root ROOT")
    if not Path(str(root)).is_dir():
        raise InputError(root, "data root not found")
    if run_id == "training":
        fold = overrides.get("fold", config.get("fold", 0))
        for part in ("train", "val"):
            split_path(root, f"IXI_{part}_fold{fold}")
    elif not (Path(str(root)) / "splits").is_dir():
        split_path(root, "IXI_test")  # raises the one-line "no splits/ folder" error


def check(argv: Sequence[str]) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """Parse and validate a command line; return what :func:`parse_cli` returns."""
    cmd, run_id, options, overrides = parse_cli(argv)
    files = _config_files(options["config_file"])
    config = check_overrides(files, overrides)
    if run_id not in config:
        raise InputError(
            ", ".join(files), f"no {run_id!r} in the config (run ids: {', '.join(_run_ids(config))})"
        )
    check_data_root(run_id, config, overrides)
    return cmd, run_id, options, overrides


def _run_ids(config: Mapping[str, Any]) -> list[str]:
    return [k for k, v in config.items() if isinstance(v, list) and v and all(isinstance(x, str) for x in v)]


def _user_error(err: BaseException) -> PddpmError | None:
    """The first :class:`PddpmError` in the cause/context chain of ``err``."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, PddpmError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd, run_id, options, overrides = check(argv)
        if cmd == "check":
            print(f"{run_id}: configuration and data root look fine")
            return 0
        from monai.bundle import run

        run(run_id, **options, **overrides)
    except Exception as err:
        user = _user_error(err)
        if user is None:
            raise
        sys.stderr.write(f"pddpm bundle: error: {user}\n")
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
