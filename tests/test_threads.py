import os
import subprocess
import sys

import pytest
import SimpleITK as sitk
import torch
from parameterized import parameterized

from pddpm_monai.threads import (
    available_cpus,
    cgroup_cpu_limit,
    keep_torch_threads,
    resolve_threads,
    set_threads,
)
from tests.conftest import REPO_ROOT

# (requested, workers, env, cpus, expected threads per process)
RESOLVE_CASES = [
    ("auto_one_process", None, 1, {}, 2, 2),
    ("auto_two_workers", None, 2, {}, 2, 1),
    ("auto_more_workers_than_cores", 0, 4, {}, 2, 1),
    ("auto_16_cores_3_workers", None, 3, {}, 16, 5),
    ("env_wins_over_cores", None, 1, {"OMP_NUM_THREADS": "1"}, 8, 1),
    ("env_is_per_process", None, 4, {"OMP_NUM_THREADS": "3"}, 8, 3),
    ("env_nested_list_first", None, 1, {"OMP_NUM_THREADS": "4,2"}, 8, 4),
    ("env_invalid_ignored", None, 2, {"OMP_NUM_THREADS": "lots"}, 8, 4),
    ("env_zero_ignored", None, 1, {"OMP_NUM_THREADS": "0"}, 6, 6),
    ("explicit_wins_over_env", 3, 2, {"OMP_NUM_THREADS": "1"}, 2, 3),
]


@parameterized.expand(RESOLVE_CASES)
def test_resolve_threads(_, requested, workers, env, cpus, expected):
    assert resolve_threads(requested, workers=workers, env=env, cpus=cpus) == expected


def test_workers_times_threads_never_exceeds_cores():
    for cpus in range(1, 33):
        for workers in range(1, cpus + 1):
            assert workers * resolve_threads(workers=workers, env={}, cpus=cpus) <= cpus


@pytest.mark.parametrize("requested, workers", [(-1, 1), (None, 0)])
def test_resolve_threads_rejects_bad_values(requested, workers):
    with pytest.raises(ValueError):
        resolve_threads(requested, workers=workers, env={}, cpus=2)


def test_available_cpus_is_the_smallest_limit():
    assert available_cpus(cpu_count=64, affinity=8, cgroup_limit=None) == 8
    assert available_cpus(cpu_count=64, affinity=8, cgroup_limit=2.5) == 2  # fractional quota: down
    assert available_cpus(cpu_count=64, affinity=8, cgroup_limit=0.5) == 1  # at least one
    assert available_cpus(cpu_count=4, affinity=8, cgroup_limit=None) == 4


def test_available_cpus_default_is_at_most_the_affinity():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_own_group(tmp_path):
    _write(tmp_path / "cpu.max", "max 100000\n")  # root: unlimited
    _write(tmp_path / "jobs" / "me" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/jobs/me\n") == pytest.approx(1.5)
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None


def test_cgroup_v1_quota(tmp_path):
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    _write(folder / "cpu.cfs_quota_us", "300000\n")
    _write(folder / "cpu.cfs_period_us", "100000\n")
    proc = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
    assert cgroup_cpu_limit(tmp_path, proc) == pytest.approx(3.0)
    _write(folder / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None


def test_no_cgroup_files_means_unlimited(tmp_path):
    assert cgroup_cpu_limit(tmp_path, "") is None


def test_set_threads_applies_to_torch_and_itk(monkeypatch):
    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        assert set_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        assert set_threads() == 2  # from the environment
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def _option_strings(parser):
    return {s for action in parser._actions for s in action.option_strings}


def test_cli_threads_option_on_computing_commands():
    from pddpm_monai.cli import THREADED_COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("preprocess", "train", "evaluate", "detect", "demo"):
        assert name in THREADED_COMMANDS
    for name, parser in sub.choices.items():
        assert ("--threads" in _option_strings(parser)) == (name in THREADED_COMMANDS), name


def test_cli_threads_applied_before_the_command(monkeypatch, tmp_path, capsys):
    from pddpm_monai import cli

    seen = {}

    def fake_demo(args):
        seen["torch"] = torch.get_num_threads()
        seen["env"] = os.environ.get("OMP_NUM_THREADS")
        return 0

    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    parser = cli.build_parser()
    demo = next(a for a in parser._actions if a.dest == "command").choices["demo"]
    demo.set_defaults(func=fake_demo)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    try:
        assert cli.main(["demo", "--out", str(tmp_path), "--threads", "1"]) == 0
        assert seen == {"torch": 1, "env": "1"}  # exported for worker processes
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--out", str(tmp_path), "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads: must be a positive integer" in capsys.readouterr().err


def test_keep_torch_threads_restores_what_the_block_changed():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with keep_torch_threads():
            torch.set_num_threads(2)
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError), keep_torch_threads():
            torch.set_num_threads(2)
            raise RuntimeError
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


NUMBA_LAUNCH = """
import sys, numpy as np, torch
torch.set_num_threads(1)
torch.get_num_threads()  # torch's OpenMP is initialised, as in any process that has run torch
if sys.argv[1] == "raw":
    from opensimplex import OpenSimplex
    OpenSimplex(0).noise2array(np.arange(8.0), np.arange(8.0))
else:
    from pddpm_monai.diffusion import simplex_noise_reference
    simplex_noise_reference(8, 8, seed=0)
print(torch.get_num_threads())
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: a leak to the core count is invisible")
def test_simplex_reference_keeps_torch_threads_when_numba_starts_its_threads():
    """numba's first parallel call moves torch to every core; the reference puts it back."""
    pytest.importorskip("numba")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("NUMBA_NUM_THREADS", None)
    threads = {}
    for variant in ("raw", "ours"):
        command = [sys.executable, "-c", NUMBA_LAUNCH, variant]
        threads[variant] = subprocess.run(
            command, env=env, capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    assert threads["ours"] == "1", threads
    if threads["raw"] == "1":  # another numba threading layer (tbb, workqueue) leaves torch alone
        pytest.skip(f"numba does not move torch's threads here: {threads}")
