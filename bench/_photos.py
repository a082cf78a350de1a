"""Photo-like benchmark inputs and process measurement, shared by the bench scripts.

Sources are real photos that ship with scikit-image and scikit-learn, cut into many different images by random
crops, flips, colour and brightness jitter and a little sensor-like noise, then written as JPEG q90 (as a camera or
a web download would be). Their file sizes and decode costs are those of real photos, unlike flat synthetic images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers_exif import camera_jpeg  # the camera-like EXIF block, shared with the tests

__all__ = [
    "augexpand_cmd",
    "base_photos",
    "busy_seconds",
    "make_image_folder",
    "median",
    "run_measured",
    "run_undisturbed",
    "write_recipe",
]

DISTURBED = 0.3  # cores kept busy by other processes during a timing, above which it is retried

# Class name -> the photos its images are cut from (skimage.data names, or "sklearn:<file>").
CLASSES = {
    "animal": ["chelsea", "cat"],
    "object": ["coffee", "rocket"],
    "scene": ["sklearn:china.jpg", "sklearn:flower.jpg", "astronaut"],
    "texture": ["hubble_deep_field", "immunohistochemistry", "retina"],
}
SHARES = [0.33, 0.27, 0.23, 0.17]  # a little imbalanced, as real folders are


def base_photos() -> dict[str, list[np.ndarray]]:
    """The real RGB photos each class is cut from."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    sklearn_photos = {Path(name).name: im for name, im in zip(sample.filenames, sample.images)}
    out: dict[str, list[np.ndarray]] = {}
    for cls, names in CLASSES.items():
        photos = []
        for name in names:
            im = sklearn_photos[name.split(":", 1)[1]] if name.startswith("sklearn:") else getattr(skimage.data, name)()
            photos.append(np.ascontiguousarray(im[..., :3]))
        out[cls] = photos
    return out


def _photo_like(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """A random crop of ``photo`` (30-100% of its area, the output's aspect), resized to (w, h) and jittered."""
    w, h = size
    ph, pw = photo.shape[:2]
    aspect = w / h
    area = rng.uniform(0.3, 1.0) * ph * pw
    ch = int(min(ph, np.sqrt(area / aspect)))
    cw = int(min(pw, ch * aspect))
    ch = int(min(ch, cw / aspect))
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = photo[y:y + ch, x:x + cw]
    interp = cv2.INTER_AREA if cw > w else cv2.INTER_CUBIC
    im = cv2.resize(crop, (w, h), interpolation=interp)
    if rng.random() < 0.5:
        im = im[:, ::-1]
    gain = rng.uniform(0.8, 1.2, size=3) * rng.uniform(0.85, 1.15)  # white balance and exposure
    offset = rng.uniform(-12, 12)
    ny, nx = int(rng.integers(0, noise.shape[0] - h + 1)), int(rng.integers(0, noise.shape[1] - w + 1))
    out = im.astype(np.float32) * gain.astype(np.float32) + np.float32(offset) + noise[ny:ny + h, nx:nx + w]
    return np.clip(out, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, n_images: int, size: tuple[int, int] = (500, 375), quality: int = 90,
                      seed: int = 0, camera_exif: bool = False) -> Path:
    """Write ``n_images`` photo-like JPEGs of ``size`` (width, height) into ``root/<class>/img_XXXXX.jpg``.

    ``camera_exif``: each file carries an EXIF block with a 160x120 JPEG thumbnail, as camera and phone files do
    (the DCF standard asks for it). Deterministic for a seed; skipped when ``root`` already holds them
    (``root/.done``).
    """
    root = Path(root)
    marker = root / ".done"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    photos = base_photos()
    w, h = size
    noise = rng.normal(0.0, 2.5, size=(h + 64, w + 64, 3)).astype(np.float32)  # sensor-like grain
    counts = [round(s * n_images) for s in SHARES]
    counts[0] += n_images - sum(counts)
    k = 0
    for (cls, class_photos), count in zip(photos.items(), counts):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            photo = class_photos[int(rng.integers(len(class_photos)))]
            im = _photo_like(photo, size, rng, noise)
            path = root / cls / f"img_{k:05d}.jpg"
            if camera_exif:
                path.write_bytes(camera_jpeg(im, quality=quality))
            else:
                ok = cv2.imwrite(str(path), cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
                assert ok
            k += 1
    marker.write_text("ok\n")
    return root


def write_floor_output(image: np.ndarray, path: Path, size: int = 224) -> None:
    """The floor's own output, as a plain loop would make it: scale the RGB image's short side to ``size``
    (bilinear), centre-crop ``size`` x ``size``, write a q95 JPEG."""
    h, w = image.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    image = image[y0:y0 + size, x0:x0 + size]
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def write_recipe(path: Path, recipe: dict) -> Path:
    """Write a recipe (JSON is YAML) and return its path."""
    path.write_text(json.dumps(recipe, indent=1))
    return path


def augexpand_cmd(*args: str) -> list[str]:
    """The real CLI, run with the interpreter of this environment."""
    return [sys.executable, "-m", "augexpand", *args]


def _tree_memory(root_pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over the descendants of ``root_pid``, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    todo = list(children.get(root_pid, []))  # the wrapper itself is not counted
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


_WRAP = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print('MAXRSS_KB', u.ru_maxrss, u.ru_utime + u.ru_stime, file=sys.stderr)
sys.exit(rc)
"""


def busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot, all cores together (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_measured(cmd: list[str], sample_memory: bool = False) -> dict:
    """Run ``cmd`` to completion; return wall seconds, stdout, and peak memory of its process tree.

    ``maxrss_mb``: getrusage(RUSAGE_CHILDREN).ru_maxrss of a fresh wrapper process, i.e. the largest single
    process of the tree. ``tree_rss_mb`` / ``tree_pss_mb``: the peak of the summed RSS / PSS over the whole tree,
    sampled every 20 ms from /proc (PSS counts pages shared by forked workers once); None off Linux or when
    ``sample_memory`` is off (the sampler costs CPU: leave it off when timing). ``others_cores``: how many cores
    other processes of the machine kept busy meanwhile (a disturbed timing when well above 0).
    """
    busy0 = busy_seconds()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAP, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            stop.wait(0.02)

    sampler = None
    if sample_memory and os.path.exists("/proc/self/smaps_rollup"):
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    if sampler is not None:
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    busy1 = busy_seconds()
    usage = next((line.split()[1:] for line in err.splitlines() if line.startswith("MAXRSS_KB")), ["0", "0"])
    maxrss, cpu = int(usage[0]), float(usage[1])
    others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0 - cpu) / wall)
    return {
        "wall": wall,
        "stdout": out,
        "cpu": cpu,
        "others_cores": others,
        "maxrss_mb": maxrss / 1024,
        "tree_rss_mb": peak[0] / 2**20 if sampler else None,
        "tree_pss_mb": peak[1] / 2**20 if sampler else None,
    }


def settle() -> None:
    """Flush dirty pages (the last run's files and their deletion) before timing anything: otherwise the disk's
    write-back of one measurement is paid by the next one."""
    os.sync()
    time.sleep(0.5)


def run_undisturbed(cmd: list[str], attempts: int = 4, pause: float = 5.0, clean: Path | None = None,
                    **kwargs) -> dict:
    """``run_measured``, run again (after a pause) while other processes of the machine disturbed it.

    A shared machine is sometimes busy with someone else's work: a timing taken then says nothing about ours.
    Returns the first undisturbed run, or the least disturbed of ``attempts``. ``clean``: a folder the command
    writes, removed before each attempt.
    """
    runs = []
    for _ in range(attempts):
        if clean is not None:
            shutil.rmtree(clean, ignore_errors=True)
        settle()
        r = run_measured(cmd, **kwargs)
        if r["others_cores"] is None or r["others_cores"] < DISTURBED:
            return r
        runs.append(r)
        time.sleep(pause)
    return min(runs, key=lambda r: r["others_cores"])


def median(values: list[float]) -> float:
    return float(np.median(values))
