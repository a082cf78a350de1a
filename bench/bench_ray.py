"""`--executor ray` against the local process pool on this machine: the same tasks, the same bytes, what it costs.

300 photo-like 500x375 JPEG sources (bench/_photos.py), the builtin `light` recipe with one copy and no
originals (224x224 JPEG q95), `--workers 2`, as whole `augexpand expand --json` processes, local and Ray
interleaved, best of the repeats. Ray here is a local Ray started for the run (RAY_ADDRESS unset). Reported: the
write phase's images/s (the executor running the tasks: `timings.write`), the executor's start-up
(`timings.start`: the process pool's fork, or ray.init plus one actor per worker, each building the pipeline),
and the whole process. The files are compared: Ray must write the same bytes. Prints; asserts nothing.

    python bench/bench_ray.py                # ~3 minutes on 2 cores
    python bench/bench_ray.py --images 600 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _photos import augexpand_cmd, make_image_folder


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "train").rglob("*")) if p.is_file()}


def run(src: Path, dst: Path, executor: str, workers: int) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    t = time.perf_counter()
    out = subprocess.run(augexpand_cmd("expand", "-r", "light", "--copies", "1", "--no-originals", "--json",
                                       "-w", str(workers), "--executor", executor, str(src), str(dst)),
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    summary = json.loads(out.stdout)
    timings = summary["timings"]
    return {"executor": executor, "workers": workers, "images": summary["images_out"], "wall": wall,
            "start": timings.get("start", 0.0), "write": timings["write"],
            "rate": summary["images_out"] / timings["write"], "stderr": out.stderr.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = make_image_folder(Path(tmp) / "src", args.images)
        best: dict[str, dict] = {}
        for k in range(args.repeats):
            for executor in ("local", "ray") if k % 2 == 0 else ("ray", "local"):
                r = run(src, Path(tmp) / executor, executor, args.workers)
                print(f"  {executor:5} -w{r['workers']}: {r['images']} images, write {r['write']:.2f} s "
                      f"({r['rate']:.0f} images/s), start {r['start']:.2f} s, whole process {r['wall']:.1f} s"
                      + (f"  [stderr: {r['stderr'][:80]}]" if r["stderr"] else ""))
                if executor not in best or r["rate"] > best[executor]["rate"]:
                    best[executor] = r
        same = digest(Path(tmp) / "local") == digest(Path(tmp) / "ray")
        local, ray = best["local"], best["ray"]
        print(f"\nbest of {args.repeats}, {args.images} sources, light 1 copy, -w{args.workers}:")
        print(f"  local pool: {local['rate']:.0f} images/s writing, start {local['start']:.2f} s, "
              f"whole {local['wall']:.1f} s")
        print(f"  Ray:        {ray['rate']:.0f} images/s writing, start {ray['start']:.2f} s, whole {ray['wall']:.1f} s")
        print(f"  Ray/local: {ray['rate'] / local['rate']:.2f}x while writing, "
              f"{local['wall'] / ray['wall']:.2f}x over the whole process; same bytes: {same}")


if __name__ == "__main__":
    main()
