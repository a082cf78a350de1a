"""Contact sheets of what a recipe makes: a few real rows of each op, made in memory and captioned.

A preview scans the source, plans the expansion exactly as ``expand`` does, picks a few rows of each op and makes
them with the same worker code (``RowMaker.make_image``), so each tile is the image ``expand`` would write for that
row, before encoding. Nothing but the sheet is written. Only the chosen rows' sources are decoded; SMOTE's
neighbour search (the one step that looks at a whole class) reads thumbnails of at most ``NEIGHBOUR_IMAGES``
images per class, so SMOTE partners in a preview are drawn among those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from augexpand.errors import AugexpandError, DestinationError, SourceError
from augexpand.folder import DEFAULT_MAX_PIXELS

__all__ = ["NEIGHBOUR_IMAGES", "SHEET_FORMATS", "PreviewError", "caption", "pick_rows", "preview"]

log = logging.getLogger("augexpand")

SHEET_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
NEIGHBOUR_IMAGES = 32  # per class: thumbnails a preview decodes for SMOTE neighbours (at least 4 x samples)
_PICK_STREAM = 1_000_003  # which rows a preview shows: a stream of its own, apart from the rows' and the plan's

# Layout of the sheet, in pixels.
_MARGIN, _GAP, _TITLE_H, _HEADER_H, _LINE_H = 10, 6, 28, 22, 14
_CAPTION_H = 2 * _LINE_H + 4
_BACKGROUND, _LETTERBOX, _INK, _MUTED, _ACCENT = (255, 255, 255), (236, 236, 236), (20, 20, 20), (90, 90, 90), \
    (25, 70, 160)


class PreviewError(AugexpandError):
    """A preview that cannot be drawn (nothing to show, a bad output path)."""


def preview(src: str | Path | None, out: str | Path, recipe: Any = "light", *, samples: int = 6,
            seed: int | None = None, overrides: dict[str, Any] | None = None, tile: int = 160,
            max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Draw a contact sheet of ``samples`` images per op of ``recipe`` on the ImageFolder ``src`` into ``out``.

    ``src=None`` uses the built-in example photos; ``seed`` overrides the recipe's (it picks the rows too).
    Returns a summary: the sheet's size and, per op, where its row lies and what each tile shows.
    ``max_pixels``: a source whose header claims more pixels is skipped (a decompression bomb; None: no limit).
    """
    from augexpand.folder import limit_opencv_pixels, scan_image_folder, write_file
    from augexpand.orientation import orientation_note, resolve_orientation
    from augexpand.plan import OPS, make_plan
    from augexpand.recipe import load_recipe, resolve_output
    from augexpand.rows import RowContext, RowMaker

    if samples < 1:
        raise PreviewError(f"samples must be at least 1, got {samples}")
    if tile < 32:
        raise PreviewError(f"tile must be at least 32 pixels, got {tile}")
    out = Path(out).expanduser()
    fmt = SHEET_FORMATS.get(out.suffix.lower())
    if fmt is None and out.is_dir():  # '-o .' said the file name must end in .png, got ''
        raise PreviewError(f"{out} is a folder; give the sheet's file name, e.g. {out / 'preview.png'}")
    if fmt is None:
        raise PreviewError(f"the sheet's file name must end in {', '.join(SHEET_FORMATS)}, got {out.name!r}")
    if max_pixels is not None:
        limit_opencv_pixels(max_pixels)
    recipe = load_recipe(recipe, {**(overrides or {}), **({"seed": seed} if seed is not None else {})})
    if src is None:
        from augexpand.example import example_dir

        src = example_dir()
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise SourceError(f"source folder {src} does not exist" if not src.exists() else f"source {src} is not a folder")
    if src == out.resolve().parent or src in out.resolve().parents:
        raise DestinationError(f"the sheet {out} would be written inside the source {src}; "
                               f"the source is never written to")

    scan = scan_image_folder(src, max_pixels=max_pixels)
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.rel, s.reason)
    recipe = resolve_output(recipe, scan)  # `size: auto` and `output` sizes follow these images, as in expand
    recipe, orientation = resolve_orientation(recipe, scan)  # `orientation: auto` too
    if orientation_note(orientation):
        log.info("%s", orientation_note(orientation))
    read: set[Path] = set()
    plan = make_plan(scan, recipe, 0.0, imap=_few_descriptors(read))
    for note in plan.notes:
        log.info("%s", note)
    if not plan.rows:
        raise PreviewError(f"{recipe.source} makes no images from {src} (no originals, copies, mix or oversample)")

    def usable(row) -> bool:  # a SMOTE row whose images all had their neighbours searched
        return row.op != "smote" or all(scan.root / scan.sources[i].rel in read for i in row.sources)

    picked = pick_rows(plan.rows, [s.label for s in scan.sources], recipe.seed, usable)
    worker = RowMaker(RowContext(str(src), "", [s.rel for s in scan.sources], [s.label for s in scan.sources],
                              scan.classes, recipe, tuple(plan.decode_scale)))
    planned = {op: sum(r.op == op for r in plan.rows) for op in OPS}
    sections = []
    for op, candidates in picked.items():
        shown, errors = [], []
        for row in candidates:
            if len(shown) == samples:
                break
            try:
                image, target, params = worker.make_image(row)
            except Exception as exc:  # noqa: BLE001  (an unreadable source, a transform that fails on this image)
                # an unreadable partner is named, not the first image (which may be fine)
                bad = next((i for i in row.sources if i in worker.failed), row.sources[0])
                errors.append(f"{scan.sources[bad].rel}: {type(exc).__name__}: {exc}".splitlines()[0])
                continue
            sources = [scan.sources[i].rel for i in row.sources]
            shown.append({"row": row.index, "sources": sources, "soft_label": target, "params": params,
                          "shape": list(image.shape), "caption": list(caption(op, target, params, scan.classes,
                                                                               sources)),
                          "image": image})
        for e in errors[:3]:
            log.warning("preview: could not make %s %s sample from %s", "an" if op[0] in "aeiou" else "a", op, e)
        sections.append({"op": op, "planned": planned[op], "description": _describe(op, recipe),
                         "samples": shown})

    if sections and not any(section["samples"] for section in sections):  # a sheet of empty rows, said 'wrote'
        raise PreviewError(f"no sample could be made from {src}: every source tried failed (named above)")
    title = f"recipe {_short(Path(recipe.source))}  on  {_short(src)}  -  seed {recipe.seed}, " \
            f"{sum(r.split == 'train' for r in plan.rows)} images planned"
    sheet, layout = _draw(sections, samples, tile, title)
    write_file(out, _encode(sheet, fmt))
    for section, rows in zip(sections, layout):
        section.update(rows)
        for s in section["samples"]:
            del s["image"]
    return {"output": str(out), "format": fmt, "width": int(sheet.shape[1]), "height": int(sheet.shape[0]),
            "src": str(src), "recipe": recipe.source, "seed": recipe.seed, "samples": samples, "tile": tile,
            "classes": scan.classes, "planned": len(plan.rows), "orientation": orientation, "ops": sections}


def _few_descriptors(read: set[Path]) -> Callable[[Callable, Iterable], list]:
    """An ``imap`` for ``make_plan``'s SMOTE neighbour pass that reads only the first images of each class.

    The plan's first SMOTE rows of a class start at its first images, so those rows keep true neighbours (among
    the images read); images not read have themselves as neighbour, and their rows are not shown."""
    def imap(fn: Callable, paths: Iterable) -> list:
        out = []
        for k, path in enumerate(paths):
            if k < NEIGHBOUR_IMAGES:
                read.add(Path(path))
                out.append(fn(path))
            else:
                out.append(None)
        return out

    return imap


def pick_rows(rows: list, labels: list[int], seed: int, usable: Callable[[Any], bool] = lambda r: True
              ) -> dict[str, list]:
    """For each op, its training rows in the order a preview tries them: shuffled within each class (first
    source's class), then taken from the classes in turn, so a few samples show as many classes as they can."""
    from augexpand.plan import OPS

    rng = np.random.default_rng([seed, _PICK_STREAM])
    by_op: dict[str, dict[int, list]] = {}
    for row in rows:
        if row.split == "train" and usable(row):
            by_op.setdefault(row.op, {}).setdefault(labels[row.sources[0]], []).append(row)
    picked = {}
    for op in sorted(by_op, key=OPS.index):
        queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_op[op].items())]
        order = []
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop(0))
        picked[op] = order
    return picked


def caption(op: str, soft: list[float], params: dict[str, Any], classes: list[str],
            sources: list[str]) -> tuple[str, str]:
    """Two caption lines for a tile: its label(s) with their weights, and the op's parameters.

    ``cutmix cat 0.62 / dog 0.38`` reads: 62% of the pixels (and of the label) come from a cat image; ``lam`` is
    the share of the first image (named on the second line), as in metadata.jsonl."""
    shares = sorted(((w, c) for w, c in zip(soft, classes) if round(w, 2) > 0), key=lambda wc: -wc[0])
    labels = classes[int(np.argmax(soft))] if len(shares) == 1 else " / ".join(f"{c} {w:.2f}" for w, c in shares)
    name = Path(sources[0]).name
    if op == "smote":
        detail = f"gap {params.get('gap', 0.0):.2f} to {Path(sources[1]).name}"
    elif op == "samplepairing":
        partner = sources[1].split("/", 1)[0]
        detail = f"mean with a {partner}, label of 1st"
    elif op == "mixup":
        detail = f"lam {params['lam']:.2f} on {name}"
    elif op == "cutmix":
        y0, y1, x0, x1 = params["box"]
        detail = f"box {y1 - y0}x{x1 - x0}, area {1.0 - params['lam']:.2f}"
    elif op == "ricap":
        detail = "areas " + " ".join(f"{a:.2f}" for a in params["areas"])
    elif params.get("policy") is not None:  # the policy's ops on this image
        detail = ", ".join("flip" if n == "HorizontalFlip" else f"{n} {v:.3g}" if v else n
                           for n, v in params["policy"]) or "no policy op"
    else:
        detail = name
    return f"{op} {labels}" if op not in ("original", "augment", "duplicate") else labels, detail


def _describe(op: str, recipe) -> str:
    """What a row of the sheet shows, in a few words."""
    spec = getattr(recipe.mix, op, None) if op in ("samplepairing", "mixup", "cutmix", "ricap") else None
    over = recipe.oversample
    words = {
        "original": "the source image" + (", resized" if recipe.output.size else ""),
        "augment": f"the pipeline ({_n_transforms(recipe)} transforms)"
                   + (f" and {recipe.policy.name}" if recipe.policy else "") + " on one source image",
        "duplicate": "random duplicates of minority images" + (", augmented" if over and over.augment else ""),
        "smote": f"SMOTE: a + gap (b - a), b among the {over.k_neighbors} nearest of a's class" if over else "",
        "samplepairing": "SamplePairing: pixel mean of two images, label of the first",
        "mixup": f"mixup: lam a + (1 - lam) b, lam ~ Beta({spec.alpha:g}, {spec.alpha:g})" if op == "mixup" else "",
        "cutmix": f"CutMix: a box of b pasted into a, label by area, lam ~ Beta({spec.alpha:g}, {spec.alpha:g})"
        if op == "cutmix" else "",
        "ricap": f"RICAP: four crops around a Beta({spec.beta:g}, {spec.beta:g}) point, label by area"
        if op == "ricap" else "",
    }
    return words.get(op, op)


def _n_transforms(recipe) -> int:
    def count(node: dict) -> int:
        return 1 + sum(count(t) for t in node.get("transforms", []) or [])

    return count(recipe.pipeline_dict["transform"]) - 1


def _short(path: Path) -> str:
    from augexpand.example import example_dir

    if path.resolve() == example_dir().resolve():
        return "the built-in example photos"
    return path.stem if path.suffix in (".yaml", ".yml") else path.name


# --------------------------------------------------------------------------------------------------------------
# Drawing


def _fit_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """The image scaled to fit a tile x tile square (nearest-neighbour when enlarging, so pixels stay visible),
    centred on a light grey letterbox."""
    import cv2

    h, w = image.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_NEAREST if scale >= 2 else (cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    small = cv2.resize(image, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else image
    out = np.empty((tile, tile, 3), np.uint8)
    out[:] = _LETTERBOX
    y, x = (tile - nh) // 2, (tile - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def _text(canvas: np.ndarray, text: str, x: int, baseline: int, width: int, scale: float = 0.4,
          color: tuple = _INK, bold: bool = False) -> None:
    """Draw ASCII text, shortened with '..' to fit ``width`` pixels."""
    import cv2

    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 2 if bold else 1
    text = text.encode("ascii", "replace").decode()
    while text and cv2.getTextSize(text, font, scale, thick)[0][0] > width:
        text = text[:-3] + ".." if len(text) > 3 else ""
    cv2.putText(canvas, text, (x, baseline), font, scale, color, thick, cv2.LINE_AA)


def _draw(sections: list[dict], samples: int, tile: int, title: str) -> tuple[np.ndarray, list[dict]]:
    """The sheet: a title, then per op a header line and a row of captioned tiles. Returns it and each row's
    vertical extent."""
    import cv2

    width = 2 * _MARGIN + samples * tile + (samples - 1) * _GAP
    row_h = _HEADER_H + tile + _CAPTION_H + _GAP
    height = _MARGIN + _TITLE_H + len(sections) * row_h + _MARGIN
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = _BACKGROUND
    _text(canvas, title, _MARGIN, _MARGIN + 16, width - 2 * _MARGIN, 0.5, _INK, bold=True)
    layout = []
    y = _MARGIN + _TITLE_H
    for section in sections:
        header = f"{section['op']}  ({section['planned']} planned)"
        _text(canvas, header, _MARGIN, y + 15, width - 2 * _MARGIN, 0.45, _ACCENT, bold=True)
        used = cv2.getTextSize(header, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 2)[0][0]
        _text(canvas, section["description"], _MARGIN + used + 12, y + 15, width - 2 * _MARGIN - used - 12, 0.38,
              _MUTED)
        top = y + _HEADER_H
        if not section["samples"]:
            _text(canvas, "no sample could be made (see the warnings)", _MARGIN, top + tile // 2, width, 0.4)
        for k, s in enumerate(section["samples"]):
            x = _MARGIN + k * (tile + _GAP)
            canvas[top:top + tile, x:x + tile] = _fit_tile(s["image"], tile)
            s["tile_at"] = [top, x]  # the tile's top-left corner (y, x) in the sheet
            first, second = s["caption"]
            _text(canvas, first, x, top + tile + _LINE_H, tile, 0.36, _INK)
            _text(canvas, second, x, top + tile + 2 * _LINE_H, tile, 0.34, _MUTED)
        layout.append({"y": y, "height": row_h})
        y += row_h
    return canvas, layout


def _encode(sheet: np.ndarray, fmt: str) -> bytes:
    """PNG at zlib level 9 (a sheet is small, and compresses a lot better than at expand's fast level 1)."""
    import cv2

    from augexpand.folder import encode_image

    if fmt != "png":
        return encode_image(sheet, fmt, 90)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise PreviewError("OpenCV could not encode the sheet as PNG")
    return buf.tobytes()
