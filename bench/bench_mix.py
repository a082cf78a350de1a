"""Cost of sample-mixing rows against single-image `light` rows, and how the SMOTE descriptor pass scales.

Part 1: for each of mixup, cutmix, ricap and samplepairing, a recipe with no copies, no originals and that one
method at count 1 (light's pipeline on each input, 224x224 JPEG q95), run as a whole `augexpand expand --workers 1`
process; its time per output image (net of start-up) over that of `light` with one copy and no originals on the
same sources. Target: at most 2.0.

Part 2: the SMOTE planning pass (`augexpand.plan.make_plan` with `oversample: smote`: a thumbnail descriptor per
source, then nearest neighbours per class) on 500 and 5000 sources, each in a fresh process: time and peak memory.
Target: linear in the number of sources. Prints ratios; asserts nothing.

    python bench/bench_mix.py            # ~3 minutes on 2 cores
    python bench/bench_mix.py --quick    # fewer images, one repeat
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _photos import DISTURBED, augexpand_cmd, make_image_folder, run_measured, run_undisturbed, write_recipe

METHODS = ("mixup", "cutmix", "ricap", "samplepairing")


def light_pipeline() -> list:
    """The pipeline of the builtin `light` recipe (so the comparison follows it if it changes)."""
    import augexpand

    path = Path(augexpand.__file__).parent / "recipes" / "light.yaml"
    return yaml.safe_load(path.read_text())["pipeline"]


def recipe(mix: dict | None = None, copies: int = 0, oversample: dict | None = None) -> dict:
    out = {"seed": 0, "copies": copies, "keep_originals": False, "pipeline": light_pipeline(),
           "output": {"size": 224, "format": "jpg", "quality": 95}}
    if mix:
        out["mix"] = mix
    if oversample:
        out["oversample"] = oversample
    return out


def timed_expand(tmp: Path, src: Path, recipe_path: Path, repeats: int, tag: str) -> dict:
    """The least disturbed of ``repeats`` whole `augexpand expand --workers 1` runs."""
    best = None
    for k in range(repeats):
        dst = tmp / f"out_{tag}_{k}"
        r = run_undisturbed(augexpand_cmd("expand", str(src), str(dst), "--recipe", str(recipe_path), "--workers",
                                          "1", "--quiet", "--json"), clean=dst)
        summary = json.loads(r["stdout"])
        r["images"] = summary["images_out"]
        r["timings"] = summary["timings"]
        shutil.rmtree(dst, ignore_errors=True)
        if best is None or r["wall"] < best["wall"]:
            best = r
    return best


def part_mixing(tmp: Path, src: Path, n_sources: int, repeats: int) -> None:
    tiny = tmp / "tiny"
    for f in sorted(src.glob("*/*.jpg"))[::max(1, n_sources // 8)][:8]:
        (tiny / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tiny / f.parent.name / f.name)
    light = write_recipe(tmp / "light1.yaml", recipe(copies=1))
    startup = min(timed_expand(tmp, tiny, light, 1, f"tiny{k}")["wall"] for k in range(3))
    print(f"start-up (whole process on 8 sources, --workers 1): {startup:.2f} s")

    # This machine's speed drifts within minutes: each method is compared with a light run made just before it.
    print(f"\nper output image, net of start-up, {n_sources} sources, --workers 1 (target: mix <= 2.0x light; each "
          f"method against\n  a light run made just before it):")
    for method in METHODS:
        base = timed_expand(tmp, src, light, repeats, f"light_{method}")
        base_ms = 1000 * (base["wall"] - startup) / base["images"]
        path = write_recipe(tmp / f"{method}.yaml", recipe(mix={method: {"count": 1}}))
        r = timed_expand(tmp, src, path, repeats, method)
        ms = 1000 * (r["wall"] - startup) / r["images"]
        ratio = ms / base_ms
        whole = (r["wall"] / r["images"]) / (base["wall"] / base["images"])
        note = ""
        for run in (base, r):
            if run["others_cores"] is not None and run["others_cores"] > DISTURBED:
                note = f"  [DISTURBED: other processes kept {run['others_cores']:.2f} cores busy]"
        print(f"  {method:<14} {r['images']:>5} img {r['wall']:6.2f} s {ms:5.2f} ms/img, light {base_ms:5.2f} ms/img  "
              f"ratio {ratio:4.2f} (whole process {whole:4.2f})  {'PASS' if ratio <= 2.0 else 'MISS'}{note}")


_PLAN_SCRIPT = r"""
import json, resource, sys, time
from pathlib import Path

t0 = time.perf_counter()
from augexpand.folder import scan_image_folder
from augexpand.oversample import image_descriptor, nearest_neighbours
from augexpand.plan import make_plan
from augexpand.recipe import load_recipe
import imblearn, sklearn.neighbors  # imported up front: what follows times the work, not the imports

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

src = Path(sys.argv[1])
recipe = load_recipe(json.loads(sys.argv[2]))
t_import = time.perf_counter() - t0
rss_ready = rss_mb()
t = time.perf_counter(); scan = scan_image_folder(src); t_scan = time.perf_counter() - t
t = time.perf_counter(); plan = make_plan(scan, recipe); t_plan = time.perf_counter() - t
rss_plan = rss_mb()
# The same pass, in its two parts: descriptors of the classes that get synthetic images, then neighbours.
counts = plan.oversample_counts
members = {}
for i, s in enumerate(scan.sources):
    if counts.get(scan.classes[s.label], 0):
        members.setdefault(s.label, []).append(i)
t = time.perf_counter()
descs = {c: [image_descriptor(scan.root / scan.sources[i].rel) for i in m] for c, m in members.items()}
t_desc = time.perf_counter() - t
t = time.perf_counter()
for d in descs.values():
    import numpy as np
    nearest_neighbours(np.stack(d), recipe.oversample.k_neighbors)
t_knn = time.perf_counter() - t
print(json.dumps({"sources": len(scan.sources), "described": sum(map(len, members.values())),
                  "smote_rows": sum(r.op == "smote" for r in plan.rows), "import": t_import, "scan": t_scan,
                  "plan": t_plan, "descriptors": t_desc, "knn": t_knn, "rss_ready": rss_ready,
                  "rss_plan": rss_plan, "rss_end": rss_mb()}))
"""


def plan_in_fresh_process(src: Path, recipe_dict: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _PLAN_SCRIPT, str(src), json.dumps(recipe_dict)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def part_smote(tmp: Path, data: Path, big: Path, small_sizes: tuple[int, int]) -> None:
    smote = recipe(oversample={"method": "smote", "sampling_strategy": "auto", "k_neighbors": 5})
    smote["pipeline"] = []
    lo, hi = small_sizes
    t = time.perf_counter()
    small = make_image_folder(data / f"small{hi}", hi, size=(200, 150), seed=1)
    print(f"\nSMOTE planning (descriptors + kNN), fresh process each, 1 core; sources: photo-like 200x150 JPEGs "
          f"(made in {time.perf_counter() - t:.0f} s)")
    sub = data / f"small{lo}"
    if not sub.exists():
        files = sorted(small.glob("*/*.jpg"))
        for f in files[:: hi // lo][:lo]:
            (sub / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, sub / f.parent.name / f.name)
    print(f"  {'sources':>8} {'size':>8} {'described':>9} {'scan s':>7} {'plan s':>7} {'desc s':>7} {'kNN s':>6} "
          f"{'us/src':>7} {'peak RSS MiB':>13} {'RSS over ready MiB':>19}")
    results = {}
    for n, src, size in [(lo, sub, "200x150"), (hi, small, "200x150"),
                         (sum(1 for _ in big.glob("*/*.jpg")), big, "500x375")]:
        r = plan_in_fresh_process(src, smote)
        results[n, size] = r
        print(f"  {n:>8} {size:>8} {r['described']:>9} {r['scan']:7.3f} {r['plan']:7.3f} {r['descriptors']:7.3f} "
              f"{r['knn']:6.3f} {1e6 * r['plan'] / n:7.0f} {r['rss_end']:13.0f} {r['rss_end'] - r['rss_ready']:19.0f}")
    a, b = results[lo, "200x150"], results[hi, "200x150"]
    exponent = math.log(b["plan"] / a["plan"]) / math.log(hi / lo)
    print(f"  {hi} vs {lo} sources: plan time x{b['plan'] / a['plan']:.1f} for x{hi / lo:.0f} the sources "
          f"(scaling exponent {exponent:.2f}; 1.00 is linear)  {'PASS' if exponent <= 1.15 else 'MISS'}; "
          f"memory over ready {a['rss_end'] - a['rss_ready']:.0f} -> {b['rss_end'] - b['rss_ready']:.0f} MiB")
    knn_exp = math.log(max(b["knn"], 1e-6) / max(a["knn"], 1e-6)) / math.log(hi / lo)
    print(f"  of which kNN: {a['knn']:.3f} -> {b['knn']:.3f} s (exponent {knn_exp:.2f}); "
          f"descriptors: {a['descriptors']:.3f} -> {b['descriptors']:.3f} s")

    # The whole CLI (workers compute descriptors in parallel), dry run: start-up + scan + plan.
    path = write_recipe(tmp / "smote.yaml", smote)
    for n, src in [(lo, sub), (hi, small)]:
        r = run_measured(augexpand_cmd("expand", str(src), str(tmp / "dry"), "--recipe", str(path), "--dry-run",
                                       "--quiet", "--json", "--workers", "2"), sample_memory=True)
        t = json.loads(r["stdout"])["timings"]
        print(f"  CLI --dry-run -w2, {n:>5} sources: {r['wall']:.2f} s whole process (scan {t['scan']:.2f} s incl. "
              f"recipe load, plan {t['plan']:.2f} s), peak tree PSS {r['tree_pss_mb'] or 0:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the images, one repeat")
    parser.add_argument("--data", type=Path, help="keep the generated source photos here (reused when present)")
    args = parser.parse_args()
    n_sources = 1000 if args.quick else 3000
    repeats = 1 if args.quick else 2
    with tempfile.TemporaryDirectory(prefix="augexpand-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or tmp / "data"
        t = time.perf_counter()
        src = make_image_folder(data / f"photos{n_sources}", n_sources)
        print(f"sources: {n_sources} photo-like 500x375 JPEG q90 in 4 classes, made in {time.perf_counter() - t:.0f} s")
        part_mixing(tmp, src, n_sources, repeats)
        part_smote(tmp, data, src, (500, 5000))


if __name__ == "__main__":
    main()
