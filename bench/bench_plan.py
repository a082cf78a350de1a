"""Planning at scale: time and peak memory to plan 10k, 100k and 1M source images, without decoding any.

What `augexpand expand` does between the scan and the first image, on a synthetic ScanResult (10 classes, 500x375
JPEG headers, no files): resolve the recipe's output size, `make_plan` (one row per output image: the split,
partner groups, every row's op, sources and mixing partners, decode scales), then cut the rows into tasks for 16
workers (`_tasks`, what an executor receives). Each (size, recipe) runs in a fresh child process; its peak RSS
(`ru_maxrss`) is reported whole and over the same process before planning (the synthetic scan itself: 1M
`Source` objects). Recipes: the builtin `heavy` (originals, 4 copies, mixup, SamplePairing: 6.5 rows a source) and
`light` (1 copy and originals: 2 rows a source). Targets: linear in the sources, 1M sources in < 60 s and < 2 GB.
Prints a table; asserts nothing.

    python bench/bench_plan.py              # ~2 minutes on 2 cores
    python bench/bench_plan.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from augexpand.expansion import _tasks
from augexpand.folder import ScanResult, Source
from augexpand.plan import make_plan
from augexpand.recipe import load_recipe, resolve_output

n, name = int(sys.argv[1]), sys.argv[2]
classes = [f"class{c:02d}" for c in range(10)]
sources = [Source(f"{classes[i % 10]}/img_{i:07d}.jpg", i % 10, f"img_{i:07d}", "RGB", 500, 375) for i in range(n)]
scan = ScanResult(Path("/nonexistent"), classes, sources)
recipe = load_recipe(name)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
recipe = resolve_output(recipe, scan, 0.0)
plan = make_plan(scan, recipe)
t1 = time.perf_counter()
tasks = _tasks(plan.rows, plan.groups, 16)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"sources": n, "recipe": name, "rows": len(plan.rows), "tasks": len(tasks), "plan_s": t1 - t0,
                  "tasks_s": t2 - t1, "before_mib": before / 1024, "peak_mib": peak / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--recipes", nargs="+", default=["heavy", "light"])
    args = parser.parse_args()
    print(f"{'recipe':7} {'sources':>9} {'rows':>9} {'tasks':>6} {'plan s':>7} {'tasks s':>7} {'us/row':>6} "
          f"{'peak MiB':>8} {'over scan':>9}")
    results = []
    for name in args.recipes:
        for n in args.sizes:
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), name], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            total = r["plan_s"] + r["tasks_s"]
            print(f"{name:7} {n:>9} {r['rows']:>9} {r['tasks']:>6} {r['plan_s']:>7.2f} {r['tasks_s']:>7.2f} "
                  f"{total / r['rows'] * 1e6:>6.2f} {r['peak_mib']:>8.0f} {r['peak_mib'] - r['before_mib']:>9.0f}")
    for name in args.recipes:
        mine = sorted((r for r in results if r["recipe"] == name), key=lambda r: r["sources"])
        for a, b in itertools.pairwise(mine):
            ratio = (b["plan_s"] + b["tasks_s"]) / (a["plan_s"] + a["tasks_s"])
            grow = (b["peak_mib"] - b["before_mib"]) / max(1e-9, a["peak_mib"] - a["before_mib"])
            print(f"{name}: {b['sources'] // a['sources']}x the sources -> {ratio:.1f}x the time, "
                  f"{grow:.1f}x the memory over the scan")
        big = mine[-1]
        verdict = "met" if big["plan_s"] + big["tasks_s"] < 60 and big["peak_mib"] < 2048 else "NOT met"
        print(f"{name}: {big['sources']} sources in {big['plan_s'] + big['tasks_s']:.1f} s, peak "
              f"{big['peak_mib']:.0f} MiB (target < 60 s and < 2048 MiB: {verdict})")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t:.0f} s, peak of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB)")
