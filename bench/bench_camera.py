"""Camera photos and small photos at codec speed: `augexpand expand` against codec floors, Augmentor, and itself.

Inputs (made once, from the real photos of scikit-image and scikit-learn, upscaled with sensor-like grain):
60 camera-size JPEGs of 4032x3024 q92 (~1.6 MB each; with an EXIF block holding a 160x120 thumbnail, as camera and
phone files have, and the same 60 without EXIF, as an export may leave them) and 1000 photos of 500x375 q90. Every
expansion is a whole
`python -m augexpand expand` process; start-up (the same command on 8 sources) is measured on its own and given
separately. The floors run in this process, one cv2 thread: per image decode, resize the short side to 224 (bilinear),
centre-crop, write a new JPEG q95; the *scaled-decode floor* decodes at the largest JPEG scale that keeps at least
twice the output's short side (`cv2.IMREAD_REDUCED_COLOR_4` for 4032x3024). The jobs of a round run back to back,
each next to its floor, and the rounds are repeated: every ratio is the median over rounds of ratios taken within one
round, so that a machine whose speed drifts (shared cores) moves both sides of each ratio together.

    python bench/bench_camera.py            # ~10 minutes on 2 cores
    python bench/bench_camera.py --quick    # one round, no memory runs (~3 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _photos import augexpand_cmd, make_image_folder, median, run_measured, settle, write_floor_output

SIZE = 224
REDUCED = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}


def links(src: Path, dst: Path, n: int) -> Path:
    """An ImageFolder of ``n`` files that are hard links to the files of ``src`` (cycled): as many sources of the
    same kind, without making them (memory and speed depend on sizes, not on which pixels)."""
    if dst.exists():
        return dst
    files = sorted(src.glob("*/*.jpg"))
    for k in range(n):
        f = files[k % len(files)]
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        target = dst / f.parent.name / f"{f.stem}_{k:05d}.jpg"
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)
    return dst


def floor_scale(h: int, w: int) -> int:
    """The largest JPEG scale keeping at least twice the output's short side."""
    return next((r for r in (8, 4, 2) if min(-(-h // r), -(-w // r)) >= 2 * SIZE), 1)


def floor_pass(files: list[Path], out: Path, scaled: bool) -> tuple[float, float]:
    """(images/s, CPU seconds per image): decode (full, or at the scaled-decode floor's scale), resize to 224 and
    centre-crop, write q95. ``out`` is a new folder, kept (see ``Bench``)."""
    out.mkdir(parents=True)
    scales = []
    for f in files:
        if not scaled:
            scales.append(1)
            continue
        from PIL import Image

        with Image.open(f) as im:
            scales.append(floor_scale(im.height, im.width))
    settle()
    start, cpu = time.perf_counter(), time.process_time()
    for k, (f, r) in enumerate(zip(files, scales)):
        im = cv2.imread(str(f), REDUCED[r])
        if r != 1:
            im = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
        write_floor_output(im, out / f"{k}.jpg", SIZE)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(files) / seconds, cpu / len(files)


def creation_ms(folder: Path, n: int = 300) -> float:
    """ms to create, write (25 KB) and close one new file in a new folder: the disk's part of every output file."""
    folder.mkdir(parents=True)
    data = os.urandom(25_000)
    start = time.perf_counter()
    for k in range(n):
        with open(folder / f"{k}.jpg", "wb") as f:
            f.write(data)
    return (time.perf_counter() - start) / n * 1e3


AUGMENTOR = textwrap.dedent("""
    import sys, contextlib, io
    import Augmentor
    src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        p = Augmentor.Pipeline(src, out, save_format="JPEG")
        p.crop_random(probability=1.0, percentage_area=0.5, randomise_percentage_area=True)
        p.resize(probability=1.0, width=224, height=224, resample_filter="BILINEAR")
        p.flip_left_right(probability=0.5)
        p.sample(n, multi_threaded=True)
""")


class Bench:
    """Every run writes a new folder, and nothing is deleted until the end. On ext4 without a journal (this machine
    kind) a new file does not reuse an inode freed in the last 1-6 minutes: each creation steps over every such
    inode of its block group, so a run that follows the deletion of a few thousand files pays up to ~1 ms per file
    it creates (measured: 0.04 ms on a quiet disk, 0.4-1.0 ms after deletions), whoever deleted them. Deleting each
    run's output before the next run made the two sides of every ratio pay that at random."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.k = tmp, 0
        self.startup: dict[int, float] = {}
        self.startup_cpu: dict[int, float] = {}

    def folder(self, name: str) -> Path:
        self.k += 1
        return self.tmp / f"{name}{self.k}"

    def expand(self, src: Path, *args: str, workers: int = 1, memory: bool = False) -> dict:
        self.k += 1
        dst = self.tmp / f"out{self.k}"
        settle()
        r = run_measured(augexpand_cmd("expand", str(src), str(dst), "--quiet", "--json", "--workers", str(workers),
                                       *args), sample_memory=memory)
        summary = json.loads(r["stdout"])
        r["images"] = summary["images_out"]
        r["write"] = summary["timings"]["write"]
        r["scales"] = summary.get("decode_scales")
        r["net"] = r["wall"] - self.startup.get(workers, 0.0)
        r["net_cpu"] = r["cpu"] - self.startup_cpu.get(workers, 0.0)  # the whole tree's CPU seconds
        return r

    def augmentor(self, src: Path, n: int) -> dict:
        self.k += 1
        dst = self.tmp / f"aug{self.k}"
        settle()
        r = run_measured([sys.executable, "-c", AUGMENTOR, str(src), str(dst), str(n)])
        made = sum(1 for _ in dst.rglob("*.JPEG")) + sum(1 for _ in dst.rglob("*.jpg"))
        r["images"] = made
        r["net_cpu"] = r["cpu"]
        return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, no memory runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, help="keep the generated photos here (reused when present)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory(prefix="augexpand-camera-") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or tmp / "data"
        t0 = time.perf_counter()
        cam = make_image_folder(data / "cam60_exif", 60, size=(4032, 3024), quality=92, camera_exif=True)
        plain = make_image_folder(data / "cam60", 60, size=(4032, 3024), quality=92)  # the same, without EXIF
        small = make_image_folder(data / "small1000", 1000)
        tiny = links(small, data / "tiny8", 8)
        cam_files, small_files = sorted(cam.glob("*/*.jpg")), sorted(small.glob("*/*.jpg"))
        print(f"inputs: {len(cam_files)} JPEGs of 4032x3024 q92 "
              f"({sum(f.stat().st_size for f in cam_files) / len(cam_files) / 2**20:.1f} MiB each), "
              f"{len(small_files)} of 500x375 q90 ({sum(f.stat().st_size for f in small_files) / len(small_files) / 1024:.0f}"
              f" KiB each); ready in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores")

        decoders(cam_files[:12], small_files[:200])

        b = Bench(tmp)
        for w in (1, 2):
            runs = [b.expand(tiny, "--copies", "1", "--no-originals", workers=w) for _ in range(3)]
            b.startup[w], b.startup_cpu[w] = median([r["wall"] for r in runs]), median([r["cpu"] for r in runs])
        print(f"\nstart-up (whole process, 8 sources, light): -w1 {b.startup[1]:.2f} s ({b.startup_cpu[1]:.2f} s CPU), "
              f"-w2 {b.startup[2]:.2f} s ({b.startup_cpu[2]:.2f} s CPU); subtracted where a figure says net")

        light1 = ("--recipe", "light", "--copies", "1", "--no-originals")
        rows: dict[str, list] = {}
        busy: list[float] = []

        def keep(name: str, value: float) -> None:
            rows.setdefault(name, []).append(value)

        for k in range(rounds):
            print(f"\nround {k + 1}/{rounds}: creating a file costs {creation_ms(b.folder('probe')):.2f} ms",
                  flush=True)
            # 12-megapixel photos
            full, full_cpu = floor_pass(cam_files, b.folder("floor"), scaled=False)
            scaled, scaled_cpu = floor_pass(cam_files, b.folder("floor"), scaled=True)
            lc = b.expand(cam, *light1)
            lp = b.expand(plain, *light1)
            hc = b.expand(cam, "--recipe", "heavy")
            keep("cam floor full img/s", full)
            keep("cam floor scaled img/s", scaled)
            keep("cam light -w1 img/s (net)", lc["images"] / lc["net"])
            keep("cam light -w1 / scaled floor (net)", lc["images"] / lc["net"] / scaled)
            keep("cam light -w1 / scaled floor (whole)", lc["images"] / lc["wall"] / scaled)
            keep("cam light -w1 / scaled floor, CPU (net)", scaled_cpu / (lc["net_cpu"] / lc["images"]))
            keep("cam light -w1 / scaled floor, no EXIF (net)", lp["images"] / lp["net"] / scaled)
            keep("cam light -w1 / full floor (net)", lc["images"] / lc["net"] / full)
            keep("cam light -w1 / full floor, CPU (net)", full_cpu / (lc["net_cpu"] / lc["images"]))
            keep("cam heavy / light per output (net)", (hc["net"] / hc["images"]) / (lc["net"] / lc["images"]))
            keep("cam heavy / light per output, CPU (net)",
                 (hc["net_cpu"] / hc["images"]) / (lc["net_cpu"] / lc["images"]))
            print(f"  12 MP: floor full {full:.1f} img/s, scaled {scaled:.1f}; light {lc['images']} img in "
                  f"{lc['wall']:.2f} s (net {lc['net']:.2f}, scales {lc['scales']}; without EXIF thumbnails net "
                  f"{lp['net']:.2f}); heavy {hc['images']} img in "
                  f"{hc['wall']:.2f} s (net {hc['net']:.2f}, scales {hc['scales']})")
            # 500x375 photos
            floor, floor_cpu = floor_pass(small_files, b.folder("floor"), scaled=False)
            l1 = b.expand(small, *light1, workers=1)
            l2 = b.expand(small, *light1, workers=2)
            a1 = b.augmentor(small, len(small_files))
            l4 = b.expand(small, "--recipe", "light", "--copies", "4", "--no-originals", workers=2)
            a4 = b.augmentor(small, 4 * len(small_files))
            keep("small floor img/s", floor)
            keep("small light -w1 / floor (net)", l1["images"] / l1["net"] / floor)
            keep("small light -w1 / floor (whole)", l1["images"] / l1["wall"] / floor)
            keep("small light -w1 / floor, CPU (net)", floor_cpu / (l1["net_cpu"] / l1["images"]))
            keep("small light -w2 / -w1, CPU spent (net)", l2["net_cpu"] / l1["net_cpu"])
            keep("small light -w2 / -w1 (net)", l1["net"] / l2["net"])
            keep("small light -w2 / -w1 (whole)", l1["wall"] / l2["wall"])
            keep("small light -w2 / -w1 (write phase)", l1["write"] / l2["write"])
            keep("small light 1 copy -w2 / Augmentor (whole)", (l2["images"] / l2["wall"]) / (a1["images"] / a1["wall"]))
            keep("small light 4 copies -w2 / Augmentor (whole)",
                 (l4["images"] / l4["wall"]) / (a4["images"] / a4["wall"]))
            keep("small light 1 copy / Augmentor, CPU per image", (a1["cpu"] / a1["images"]) / (l2["cpu"] / l2["images"]))
            keep("small light 4 copies / Augmentor, CPU per image",
                 (a4["cpu"] / a4["images"]) / (l4["cpu"] / l4["images"]))
            for r in (lc, hc, l1, l2, a1, l4, a4):
                busy.append(r["others_cores"] or 0.0)
            print(f"  500x375: floor {floor:.0f} img/s; light -w1 {l1['wall']:.2f} s (net {l1['net']:.2f}, write "
                  f"{l1['write']:.2f}), -w2 {l2['wall']:.2f} s (net {l2['net']:.2f}, write {l2['write']:.2f}); "
                  f"Augmentor {a1['images']} img {a1['wall']:.2f} s, 4x {a4['images']} img {a4['wall']:.2f} s; "
                  f"augexpand 4 copies -w2 {l4['wall']:.2f} s")
            print(f"  other processes kept {median([x for x in busy[-7:]]):.2f} cores busy (median over the runs)")

        print(f"\nmedians over {rounds} round(s) (min-max in brackets); other processes kept "
              f"{median(busy):.2f} cores busy (median, max {max(busy):.2f}):")
        targets = {
            "cam light -w1 / scaled floor (net)": (">=", 0.85),
            "cam light -w1 / scaled floor, CPU (net)": (">=", 0.85),
            "cam heavy / light per output (net)": ("<=", 1.25),
            "cam heavy / light per output, CPU (net)": ("<=", 1.25),
            "small light -w1 / floor (net)": (">=", 0.85),
            "small light -w1 / floor, CPU (net)": (">=", 0.85),
            "small light -w2 / -w1 (net)": (">=", 1.8),
            "small light 1 copy -w2 / Augmentor (whole)": (">=", 1.8),
            "small light 4 copies -w2 / Augmentor (whole)": (">=", 3.0),
        }
        for name, values in rows.items():
            m = median(values)
            line = f"  {name:<46} {m:8.2f}  [{min(values):.2f}-{max(values):.2f}]"
            if name in targets:
                op, goal = targets[name]
                ok = m >= goal if op == ">=" else m <= goal
                line += f"  target {op} {goal:.2f}  {'PASS' if ok else 'MISS'}"
            print(line)

        if not args.quick:
            memory(b, cam, plain, small, data, light1)


def memory(b: Bench, cam: Path, plain: Path, small: Path, data: Path, light1: tuple[str, ...]) -> None:
    """Peak memory for 60 vs 600 sources (the same photos linked ten times), 12 MP and 500x375."""
    print("\npeak memory; 600 sources = the 60 photos linked 10 times (light: 1 copy, no originals; heavy: its own "
          "4 copies + originals + mixup + SamplePairing)")
    print(f"  {'photos':<15} {'job':<6} {'sources':>7} {'workers':>7} {'largest process MiB':>20} {'tree PSS MiB':>13}")
    small60 = links(small, data / "small60", 60)
    cam600, small600 = links(cam, data / "cam600", 600), links(small60, data / "small600", 600)
    plain600 = links(plain, data / "cam600_plain", 600)
    runs = [("12 MP", "light", cam, cam600, (1, 2)), ("12 MP", "heavy", cam, cam600, (2,)),
            ("12 MP, no EXIF", "light", plain, plain600, (1,)),
            ("500x375", "light", small60, small600, (1, 2))]
    for label, job, few, many, workers in runs:
        job_args = light1 if job == "light" else ("--recipe", "heavy")
        for src, n in ((few, 60), (many, 600)):
            for w in workers:
                r = b.expand(src, *job_args, workers=w, memory=True)
                pss = "n/a" if r["tree_pss_mb"] is None else f"{r['tree_pss_mb']:.0f}"
                print(f"  {label:<15} {job:<6} {n:>7} {w:>7} {r['maxrss_mb']:>20.0f} {pss:>13}", flush=True)


def decoders(cam_files: list[Path], small_files: list[Path]) -> None:
    """ms per image for OpenCV and simplejpeg, full and scaled, interleaved image by image (medians)."""
    import simplejpeg

    def cv(data: bytes, r: int) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[r])

    def sj(data: bytes, r: int) -> np.ndarray:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // r), min_width=-(-w // r))

    print("\ndecoders, ms per image from bytes in memory (median, interleaved image by image), 1 thread:")
    for label, files, reps in (("4032x3024", cam_files, 2), ("500x375", small_files, 3)):
        datas = [f.read_bytes() for f in files]
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(reps):
            for data in datas:
                for r in (1, 2, 4, 8):
                    for name, fn in (("opencv", cv), ("simplejpeg", sj)):
                        t = time.perf_counter()
                        fn(data, r)
                        times.setdefault((name, r), []).append(time.perf_counter() - t)
        cells = []
        for r in (1, 2, 4, 8):
            a, s = median(times["opencv", r]) * 1e3, median(times["simplejpeg", r]) * 1e3
            cells.append(f"1/{r}: {a:.2f} vs {s:.2f} ({s / a:.2f}x)")
        print(f"  {label:<10} opencv vs simplejpeg  " + "  ".join(cells))


if __name__ == "__main__":
    main()
