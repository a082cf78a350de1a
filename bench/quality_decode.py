"""The quality cost of scaled JPEG decoding, on real photos: the measurement behind decodescale.py's rule.

Each real photo of scikit-image and scikit-learn is encoded as JPEG q92 4:2:0. Crops of 50-100 % of its short
side (square, on the 8-pixel grid so that they are exact at every scale) are resized to an output of side o with
the bilinear interpolation albumentations' RandomResizedCrop uses: once from the full decode (what a full-size
decoder gives), once from the 1/r decode (r = 2, 4, 8), with o chosen so that the decoded crop is k times the
output (k = decoded crop side / output side, the rule's margin). Both are compared with the alias-free reference:
the same crop of the full decode area-averaged (INTER_AREA) to o. PSNR against the full decode's output is printed
too, but it mostly measures the full decode's own aliasing (bilinear shrinking by more than 2x skips pixels).

    python bench/quality_decode.py     # ~1 minute
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import simplejpeg


def photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    out = {n: getattr(data, n)() for n in ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina"]}
    out["motorcycle"] = cv2.cvtColor(cv2.imread(str(Path(data.data_dir) / "motorcycle_left.png")), cv2.COLOR_BGR2RGB)
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images):
        out[Path(name).stem] = image
    return {k: np.ascontiguousarray(v[..., :3]) for k, v in out.items()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> None:
    from skimage.metrics import structural_similarity as ssim

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    ks = (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0)
    results: dict[float, list[tuple[float, ...]]] = {k: [] for k in ks}
    images = photos()
    for image in images.values():
        h8, w8 = image.shape[0] // 8 * 8, image.shape[1] // 8 * 8
        data = simplejpeg.encode_jpeg(np.ascontiguousarray(image[:h8, :w8]), quality=92, colorsubsampling="420")
        decoded = {r: simplejpeg.decode_jpeg(data, "RGB", min_height=h8 // r, min_width=w8 // r) for r in (1, 2, 4, 8)}
        for _ in range(8):
            side = int(rng.uniform(0.5, 1.0) * min(h8, w8)) // 8 * 8
            y = int(rng.integers(0, (h8 - side) // 8 + 1)) * 8
            x = int(rng.integers(0, (w8 - side) // 8 + 1)) * 8
            full = decoded[1][y:y + side, x:x + side]
            for k in ks:
                for r in (2, 4, 8):
                    o = int(round(side / r / k))
                    if o < 16:
                        continue
                    ideal = cv2.resize(full, (o, o), interpolation=cv2.INTER_AREA)
                    from_full = cv2.resize(full, (o, o), interpolation=cv2.INTER_LINEAR)
                    crop = decoded[r][y // r:(y + side) // r, x // r:(x + side) // r]
                    from_scaled = cv2.resize(crop, (o, o), interpolation=cv2.INTER_LINEAR)
                    results[k].append((psnr(from_full, ideal), psnr(from_scaled, ideal),
                                       ssim(from_full, ideal, channel_axis=2), ssim(from_scaled, ideal, channel_axis=2),
                                       psnr(from_scaled, from_full)))
    print(f"{len(images)} real photos x 8 crops x scales 1/2, 1/4, 1/8; k = decoded crop side / output side")
    print("against the alias-free reference (full decode, area-averaged): median PSNR dB and SSIM (5th percentile)")
    print(f"{'k':>5} | {'full decode':>22} | {'scaled decode':>22} | scaled worse | PSNR scaled vs full decode")
    for k in ks:
        v = np.array(results[k])
        worse = float(np.mean(v[:, 1] < v[:, 0]))
        print(f"{k:5.2f} | {np.median(v[:, 0]):5.1f} ({np.percentile(v[:, 0], 5):4.1f}) {np.median(v[:, 2]):.3f} "
              f"({np.percentile(v[:, 2], 5):.3f}) | {np.median(v[:, 1]):5.1f} ({np.percentile(v[:, 1], 5):4.1f}) "
              f"{np.median(v[:, 3]):.3f} ({np.percentile(v[:, 3], 5):.3f}) | {worse:11.0%} | {np.median(v[:, 4]):5.1f}")


if __name__ == "__main__":
    main()
