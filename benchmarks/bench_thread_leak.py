"""Cost of numba's thread leak on a busy machine, and that ``simplex_noise_reference`` avoids it.

numba's OpenMP layer shares torch's ``libgomp``; its first ``parallel=True`` call in a process
(``opensimplex.noise2array``) moves torch from the one thread it was set to onto every core
(:func:`pddpm_monai.threads.keep_torch_threads`). Each condition runs in a fresh process set to one
torch thread, with one busy process beside it per other core (as the second pytest-xdist worker,
or a second preprocessing worker), and times small conv training steps:

- ``clean``: nothing else;
- ``raw``: after one ``opensimplex.noise2array`` call;
- ``reference``: after one :func:`pddpm_monai.diffusion.simplex_noise_reference` call.

Usage::

    python benchmarks/bench_thread_leak.py [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _common import cpu_model, load_average

CHILD = """
import sys, time, numpy as np, torch
torch.set_num_threads(1)
torch.get_num_threads()
if sys.argv[1] == "raw":
    from opensimplex import OpenSimplex
    OpenSimplex(0).noise2array(np.arange(8.0), np.arange(8.0))
elif sys.argv[1] == "reference":
    from pddpm_monai.diffusion import simplex_noise_reference
    simplex_noise_reference(8, 8, seed=0)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 1, 3, padding=1))
optimizer = torch.optim.Adam(net.parameters())
x = torch.rand(8, 1, 32, 32)
start = time.perf_counter()
for _ in range(int(sys.argv[2])):
    optimizer.zero_grad()
    (net(x) - x).abs().mean().backward()
    optimizer.step()
print(torch.get_num_threads(), time.perf_counter() - start)
"""
HOG = "while True: pass"
CONDITIONS = ("clean", "raw", "reference")


def run_condition(condition: str, steps: int) -> tuple[int, float]:
    """(torch threads after the condition, seconds for ``steps`` steps) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    command = [sys.executable, "-c", CHILD, condition, str(steps)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.split()
    return int(out[-2]), float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, {cores} cores")
    print(f"# load average before: {load_average()}; {cores - 1} busy process(es) beside each run")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(cores - 1)]
    try:
        best = {}
        for condition in CONDITIONS:
            runs = [run_condition(condition, args.steps) for _ in range(args.repeats)]
            best[condition] = (runs[0][0], min(seconds for _, seconds in runs))
    finally:
        for hog in hogs:
            hog.kill()
    print(f"| condition | torch threads | best of {args.repeats}, {args.steps} steps [s] | ratio to clean |")
    print("|---|---|---|---|")
    for condition, (threads, seconds) in best.items():
        print(f"| {condition} | {threads} | {seconds:.2f} | {seconds / best['clean'][1]:.2f} |")


if __name__ == "__main__":
    main()
