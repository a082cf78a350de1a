"""Mixing mathematics on real pixels: the pure functions, then the images `augexpand expand` writes.

Sources are PNG photo crops already at the output size and the pipeline is empty, so every written pixel can be
recomputed exactly from the recorded sources and parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from augexpand.expansion import expand
from augexpand.mixing import (
    MIXERS,
    blend,
    cutmix,
    cutmix_box,
    mixup,
    ricap,
    ricap_boundary,
    sample_pairing,
    smote_interpolate,
    soft_label,
)
from tests.helpers_mix import NO_PIPELINE, crops, decoded, params_of, png_folder, records

CLASSES = ["astronaut", "cat", "coffee"]


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """Two different real photos of the same shape (48x48)."""
    return crops("astronaut", 1, seed=1, size=48)[0], crops("coffee", 1, seed=2, size=48)[0]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """astronaut 4, cat 3, coffee 2: 32x32 PNGs."""
    return png_folder(tmp_path_factory.mktemp("mix") / "src",
                      {"astronaut": ("astronaut", 4), "cat": ("chelsea", 3), "coffee": ("coffee", 2)})


@pytest.fixture(scope="module")
def mixed(src: Path, tmp_path_factory) -> Path:
    """An expansion of ``src`` with every mixing method, no pipeline, PNG output at the sources' size."""
    no_aug = {"augment_inputs": False}
    recipe = {**NO_PIPELINE, "seed": 5, "mix": {"mixup": {"count": 2, **no_aug}, "cutmix": {"count": 2, **no_aug},
                                                "ricap": {"count": 2, **no_aug},
                                                "samplepairing": {"count": 1, **no_aug}}}
    dst = tmp_path_factory.mktemp("mix") / "out"
    expand(src, dst, recipe, workers=1)
    return dst


def _expected_soft(labels: list[int], weights: list[float]) -> np.ndarray:
    target = np.zeros(len(CLASSES))
    for label, weight in zip(labels, weights):
        target[label] += weight
    return target


def _label(rel: str) -> int:
    return CLASSES.index(rel.split("/")[0])


# --------------------------------------------------------------------------------------------------------------
# Pure functions


@pytest.mark.parametrize("lam", [
    0.0,    # all b
    1.0,    # all a
    0.5,    # SamplePairing's weight
    0.37,   # an ordinary draw
    0.999,  # close to a: rounding still within 1
])
def test_mixup_is_a_convex_blend_of_the_pixels(pair, lam):
    a, b = pair
    before = a.copy(), b.copy()
    out = mixup(a, b, lam)
    expected = lam * a.astype(np.float64) + (1 - lam) * b.astype(np.float64)
    assert out.dtype == np.uint8 and out.shape == a.shape
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0
    assert np.array_equal(a, before[0]) and np.array_equal(b, before[1])  # inputs untouched


def test_sample_pairing_is_the_pixel_mean(pair):
    a, b = pair
    out = sample_pairing(a, b).astype(np.float64)
    assert np.abs(out - (a.astype(np.float64) + b) / 2).max() <= 1.0
    assert not np.array_equal(out, a)  # it really mixes


@pytest.mark.parametrize("gap", [0.0, 0.25, 0.8, 1.0])
def test_smote_interpolation_moves_from_a_towards_b(pair, gap):
    a, b = (x.astype(np.float64) for x in pair)
    out = smote_interpolate(*pair, gap).astype(np.float64)
    assert np.abs(out - (a + gap * (b - a))).max() <= 1.0
    assert (out >= np.minimum(a, b) - 1).all() and (out <= np.maximum(a, b) + 1).all()


def test_blend_refuses_different_shapes(pair):
    with pytest.raises(ValueError, match="same shape"):
        blend(pair[0], pair[1][:40], 0.5)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_cutmix_pastes_the_box_and_labels_by_its_exact_area(pair, lam):
    a, b = pair
    box = cutmix_box(48, 48, lam, np.random.default_rng(3))
    out, kept = cutmix(a, b, box)
    y0, y1, x0, x1 = box
    inside = np.zeros(a.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    assert np.array_equal(out[inside], b[inside]) and np.array_equal(out[~inside], a[~inside])
    assert kept == pytest.approx(1 - inside.sum() / inside.size, abs=1e-12)


def test_cutmix_box_covers_one_minus_lambda_when_not_clipped():
    rng = np.random.default_rng(0)
    for lam in np.linspace(0.05, 0.95, 19):
        y0, y1, x0, x1 = cutmix_box(1000, 1000, float(lam), rng)
        if 0 < y0 and y1 < 1000 and 0 < x0 and x1 < 1000:  # not clipped by the border
            assert (y1 - y0) * (x1 - x0) / 1e6 == pytest.approx(1 - lam, abs=0.01)


def test_ricap_tiles_are_the_recorded_crops_and_areas_sum_to_one():
    images = [crops(name, 1, seed=4, size=40)[0] for name in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(9)
    bh, bw = ricap_boundary(40, 40, 0.3, rng)
    out, areas, offsets = ricap(images, (bh, bw), rng)
    assert sum(areas) == pytest.approx(1.0, abs=1e-12)
    sizes = [(bh, bw), (bh, 40 - bw), (40 - bh, bw), (40 - bh, 40 - bw)]
    places = [(0, 0), (0, bw), (bh, 0), (bh, bw)]
    for image, (h, w), (py, px), (y, x), area in zip(images, sizes, places, offsets, areas):
        assert np.array_equal(out[py:py + h, px:px + w], image[y:y + h, x:x + w])
        assert area == pytest.approx(h * w / 1600)


def test_soft_label_sums_weights_per_class():
    assert soft_label([2, 0, 2, 1], [0.1, 0.2, 0.3, 0.4], 3) == pytest.approx([0.2, 0.4, 0.4])
    assert soft_label([1, 1], [0.7, 0.3], 3) == pytest.approx([0, 1, 0])


def test_samplepairing_mixer_keeps_the_first_label(pair):
    _, target, params = MIXERS["samplepairing"].mix(list(pair), [0, 2], 3, None, np.random.default_rng(0))
    assert target == [1.0, 0.0, 0.0] and params == {"lam": 0.5}


# --------------------------------------------------------------------------------------------------------------
# What expand writes


def test_every_written_label_is_a_distribution_whose_argmax_is_the_folder(src, mixed):
    rows = records(mixed)
    assert {r["op"] for r in rows} == {"mixup", "cutmix", "ricap", "samplepairing"}
    assert len(rows) == 2 * 9 * 3 + 9
    for r in rows:
        soft = np.asarray(r["soft_label"])
        assert soft.shape == (3,) and (soft >= 0).all() and soft.sum() == pytest.approx(1.0, abs=1e-9)
        assert r["label"] == CLASSES[int(np.argmax(soft))] == r["file_name"].split("/")[0]
        assert (mixed / "train" / r["file_name"]).is_file()
        assert all((src / s).is_file() for s in r["sources"])


def test_written_mixup_and_samplepairing_pixels_are_the_blend_of_the_sources(src, mixed):
    rows = [r for r in records(mixed) if r["op"] in ("mixup", "samplepairing")]
    lams = set()
    for r in rows:
        a, b = (decoded(src, s) for s in r["sources"])
        out = decoded(mixed / "train", r["file_name"])
        lam = r["lam"]
        assert np.abs(out - (lam * a + (1 - lam) * b)).max() <= 1, r["file_name"]
        labels = [_label(s) for s in r["sources"]]
        if r["op"] == "samplepairing":
            assert lam == 0.5 and r["soft_label"] == _expected_soft(labels[:1], [1.0]).tolist()
        else:
            assert np.allclose(r["soft_label"], _expected_soft(labels, [lam, 1 - lam]))
            lams.add(round(lam, 6))
    assert len(lams) > 10  # drawn per row


def test_written_cutmix_is_the_partner_inside_the_box_and_the_first_outside(src, mixed):
    rows = [r for r in records(mixed) if r["op"] == "cutmix"]
    assert rows
    for r in rows:
        a, b = (decoded(src, s) for s in r["sources"])
        out = decoded(mixed / "train", r["file_name"])
        y0, y1, x0, x1 = params_of(r)["box"]
        inside = np.zeros((32, 32), bool)
        inside[y0:y1, x0:x1] = True
        assert np.array_equal(out[inside], b[inside]) and np.array_equal(out[~inside], a[~inside])
        assert r["lam"] == pytest.approx(1 - inside.sum() / 1024, abs=1e-12)
        labels = [_label(s) for s in r["sources"]]
        assert np.allclose(r["soft_label"], _expected_soft(labels, [r["lam"], 1 - r["lam"]]))


def test_written_ricap_tiles_match_the_recorded_offsets_and_areas(src, mixed):
    rows = [r for r in records(mixed) if r["op"] == "ricap"]
    assert rows
    for r in rows:
        p = params_of(r)
        assert len(r["sources"]) == 4 and sum(p["areas"]) == pytest.approx(1.0, abs=1e-12)
        out = decoded(mixed / "train", r["file_name"])
        bh, bw = p["boundary"]
        sizes = [(bh, bw), (bh, 32 - bw), (32 - bh, bw), (32 - bh, 32 - bw)]
        places = [(0, 0), (0, bw), (bh, 0), (bh, bw)]
        for rel, (h, w), (py, px), (y, x), area in zip(r["sources"], sizes, places, p["offsets"], p["areas"]):
            assert np.array_equal(out[py:py + h, px:px + w], decoded(src, rel)[y:y + h, x:x + w])
            assert area == pytest.approx(h * w / 1024)
        assert np.allclose(r["soft_label"], _expected_soft([_label(s) for s in r["sources"]], p["areas"]))


def test_same_bytes_with_one_or_two_workers_with_mixing_and_smote(src, tmp_path):
    recipe = {"seed": 2, "copies": 1, "pipeline": [{"HorizontalFlip": {"p": 0.5}}, {"RandomBrightnessContrast": {}}],
              "mix": {"mixup": {"count": 1}, "cutmix": {"count": 1}, "ricap": {"count": 0.5},
                      "samplepairing": {"count": 0.5}},
              "oversample": {"method": "smote", "sampling_strategy": "all", "k_neighbors": 2, "augment": True},
              "output": {"size": 32, "format": "png"}}
    digests = []
    for workers in (1, 2):
        expand(src, tmp_path / f"w{workers}", recipe, workers=workers)
        train = tmp_path / f"w{workers}" / "train"
        digests.append({p.relative_to(train).as_posix(): p.read_bytes() for p in sorted(train.rglob("*"))
                        if p.is_file()})
    assert digests[0] == digests[1]
    ops = {r["op"] for r in records(tmp_path / "w1")}
    assert ops == {"original", "augment", "smote", "mixup", "cutmix", "ricap", "samplepairing"}


@pytest.mark.parametrize("sizes, count", [((1,) * 12, 0.5), ((5, 3, 3, 1, 1), 0.5), ((5, 3, 3, 1, 1), 0.25)])
def test_a_per_image_count_is_count_times_the_training_images_not_rounded_class_by_class(tmp_path, sizes, count):
    """count: 0.5 on twelve one-image classes is six mixups (rounding each class's 0.5 made none), and each class
    gets its share within one row; what was written is what --dry-run counted."""
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    src = png_folder(tmp_path / "src", {f"c{k:02d}": (names[k % 4], n) for k, n in enumerate(sizes)})
    recipe = {**NO_PIPELINE, "mix": {"mixup": {"count": count, "augment_inputs": False}}}
    planned = expand(src, tmp_path / "plan", recipe, workers=1, dry_run=True)
    dst = tmp_path / "out"
    expand(src, dst, recipe, workers=1)
    rows = records(dst)
    assert len(rows) == int(count * sum(sizes) + 0.5) == planned["images_out"]
    firsts = [r["sources"][0].split("/")[0] for r in rows]
    for k, n in enumerate(sizes):
        assert abs(firsts.count(f"c{k:02d}") - count * n) < 1
    assert all((dst / "train" / r["file_name"]).is_file() for r in rows)
