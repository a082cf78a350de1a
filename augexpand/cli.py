"""The augexpand command line: a thin Click layer over the library. Errors become one-line messages."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path

import click

from augexpand import __version__
from augexpand._cliutil import (
    CONTEXT,
    Interrupted,
    json_option,
    json_text,
    max_pixels_option,
    printable,
    printable_strings,
    require_output_file,
    require_path,
    setup_logging,
)
from augexpand.errors import AugexpandError
from augexpand.formatting import plural

__all__ = ["cli", "main"]

SEED_MAX = (1 << 64) - 1  # a recipe's seed is below 2**64 (numpy's SeedSequence entropy of one word)

# setup_logging under its old private name too: other modules and tests may still call it
_setup_logging = setup_logging


class _Group(click.Group):
    """A Click group that turns our domain errors into one-line ``Error: ...`` messages (exit 1), and a Ctrl-C that
    no command explains (one while a command starts) into ``Error: interrupted`` (exit 130, not "Aborted!")."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AugexpandError as exc:
            raise click.ClickException(printable(_one_line(str(exc)), one_line=True)) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except MemoryError:
            raise click.ClickException("out of memory: fewer --workers, a smaller output size or a lower "
                                       "--max-pixels need less") from None
        except OSError as exc:  # what the system refused on a path no check foresaw (a name over 255 bytes)
            if exc.errno == errno.EPIPE:
                raise  # stdout closed early (| head): Click ends quietly
            reason = exc.strerror or str(exc) or type(exc).__name__
            where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
            raise click.ClickException(printable(where + reason, one_line=True)) from None


def _one_line(message: str) -> str:
    """An error raised in a DataLoader worker comes back re-raised with the worker's traceback in its message
    ("Caught TrainingError in DataLoader worker process 0. Original Traceback ..."): its last line is the error."""
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    kind, sep, text = last.partition(": ")
    return text if sep and kind.rsplit(".", 1)[-1].endswith("Error") else last


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="augexpand")
def cli() -> None:
    """Expand a small labelled ImageFolder into a larger one on disk, and fine-tune a CNN on it.

    \b
    Example:
      augexpand expand --recipe heavy --example dst/     # try it on the built-in photos
      augexpand expand --recipe heavy.yaml src/ dst/     # your own ImageFolder
      augexpand train dst/ --out runs/exp1
      augexpand evaluate runs/exp1 test/
    """


def _parse_size(value: str | None) -> tuple[int, int] | str | None:
    if value is None:
        return None
    if value.lower() in ("native", "none", "keep"):
        return "native"
    if value.lower() == "auto":
        return "auto"
    parts = value.lower().replace("x", " ").split()
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) <= 0:
        raise click.BadParameter(f"expected SIZE like 224 or 256x192 (height x width), 'auto' or 'native', "
                                 f"got {value!r}",
                                 param_hint="--size")
    from augexpand.recipe import MAX_SIDE

    if max(numbers) > MAX_SIDE:
        raise click.BadParameter(f"at most {MAX_SIDE} pixels a side, got {value!r}", param_hint="--size")
    return (numbers[0], numbers[-1])


@cli.command("expand", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="SRC DST")
@click.option("-r", "--recipe", default="light", show_default=True, metavar="NAME|PATH",
              help="A recipe YAML file, or a builtin recipe name (see `augexpand recipes`).")
@click.option("--example", is_flag=True, help="Use the built-in example dataset as SRC (then give only DST).")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), help="Seed (overrides the recipe's).")
@click.option("--copies", type=click.IntRange(0, 10_000), help="Augmented copies per source image (overrides the recipe).")
@click.option("--target-per-class", type=click.IntRange(1, 10_000_000),
              help="Make augmented copies until each class has at least this many images (minority classes get more; "
                   "overrides the recipe).")
@click.option("--originals/--no-originals", default=None, help="Write the source images too (default: the recipe's).")
@click.option("--size", metavar="SIZE", help="Output size: 224, 256x192 (height x width), 'auto' (224, or the sources' median short "
                   "side when smaller) or 'native'.")
@click.option("--format", "fmt", type=click.Choice(["auto", "jpg", "png", "webp"], case_sensitive=False),
              help="Output format (overrides the recipe). auto: png when most training sources are lossless "
                   "(PNG, BMP, TIFF), jpg for photos.")
@click.option("--quality", type=click.IntRange(1, 100), help="JPEG/WebP quality (overrides the recipe).")
@click.option("-w", "--workers", type=click.IntRange(min=1),
              help="Worker processes [default: all cores; with --executor ray, all CPUs of the cluster].")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the images are made: a local process pool, or Ray (the cluster in RAY_ADDRESS, else a "
                   "local Ray; DST must be on a filesystem every node sees).")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0,
              help="Hold out this stratified fraction of the source images, untouched, in DST/val.")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable file instead of skipping it.")
@click.option("--resume", is_flag=True, help="Finish an interrupted run into DST without redoing finished images.")
@click.option("--overwrite", is_flag=True, help="Replace DST if an earlier augexpand run wrote it.")
@click.option("--dry-run", is_flag=True, help="Scan and plan, print what would be made, write nothing.")
@max_pixels_option
@click.option("--shard", metavar="I/N", callback=lambda ctx, param, value: _parse_shard(value),
              help="Make only shard I of N (a job array's task) into a shared DST; afterwards, one --resume run "
                   "without --shard writes the manifest and card.")
@click.option("--allow-large", is_flag=True, help="Run a plan of more than 1,000,000 images or 100 GB (refused "
              "without it: a typo such as copies: 10000 would fill the disk).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@json_option
def expand_command(paths, recipe, example, seed, copies, target_per_class, originals, size, fmt, quality, workers,
                   executor, val_fraction, strict, resume, overwrite, dry_run, max_pixels, shard, allow_large, quiet,
                   as_json):
    """Expand the ImageFolder SRC into a larger one in DST, with a soft-label manifest.

    SRC holds one folder per class (images anywhere below it). DST receives train/<class>/...,
    train/metadata.jsonl, dataset.json and, with --val-fraction, val/. The same SRC, recipe and
    seed give byte-identical files with any number of workers.

    \b
    Example:
      augexpand expand --recipe heavy --example out/               # the built-in photos
      augexpand expand --recipe heavy.yaml --seed 1 photos/ out/
      augexpand expand -r light --copies 5 --val-fraction 0.2 photos/ out/ --json
      augexpand expand --shard 2/8 photos/ out/ && augexpand expand --resume photos/ out/   # job arrays
      RAY_ADDRESS=head:6379 augexpand expand --executor ray -r heavy /shared/src /shared/out
    """
    from augexpand.folder import limit_opencv_pixels

    limit_opencv_pixels(max_pixels)  # before anything loads OpenCV (it reads its limit once, when it loads)
    from augexpand.expansion import expand

    if example and len(paths) != 1:
        raise click.UsageError("with --example, give only DST")
    if not example and len(paths) != 2:
        raise click.UsageError("expected SRC and DST (or --example DST)")
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite cannot be used together")
    if shard and overwrite:
        raise click.UsageError("--shard and --overwrite cannot be used together (shards of one plan share DST: "
                               "clear it with one --overwrite run first)")
    if math.isnan(val_fraction):  # nan passes FloatRange's comparisons
        raise click.BadParameter("nan is not a fraction; expected a number in [0, 1)", param_hint="'--val-fraction'")
    src, dst = (None, paths[0]) if example else paths
    require_path(src, "SRC")
    given = {"seed": seed, "copies": copies, "target_per_class": target_per_class, "keep_originals": originals,
             "output.format": fmt, "output.quality": quality, "output.size": _parse_size(size)}
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides.get("output.size") == "native":
        overrides["output.size"] = None
    setup_logging(quiet or as_json)
    progress = not quiet and not as_json and sys.stderr.isatty()
    try:
        summary = expand(src, dst, recipe, overrides=overrides, workers=workers, val_fraction=val_fraction,
                         strict=strict, resume=resume, overwrite=overwrite, dry_run=dry_run, progress=progress,
                         max_pixels=max_pixels, shard=shard, executor=executor, allow_large=allow_large)
    except KeyboardInterrupt:  # the workers are stopped and this run's temporary files removed on the way out
        started = not dry_run and (Path(dst) / ".augexpand").is_dir()
        raise Interrupted(f"interrupted: the images made so far are kept in {printable(str(dst))}; run the same "
                          f"command with --resume to finish" if started else
                          "interrupted before anything was written") from None
    if as_json:
        click.echo(printable(json.dumps(summary, indent=2, ensure_ascii=False)))
    elif not quiet:
        _print_expand_summary(printable_strings(summary))  # paths and class names of any bytes


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    from augexpand.destination import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None
def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} GB"


def _print_expand_summary(s: dict) -> None:
    counts = s["counts"]
    ops = list(counts["per_op"])
    verb = "Would make" if s["dry_run"] else "Made"
    rate = f", {s['images_per_second']:.0f} images/s" if s.get("images_per_second") else ""
    seconds = sum(v for k, v in s["timings"].items() if k != "total")
    size = f" of {s['output_size'][0]}x{s['output_size'][1]}" if s.get("output_size") else ""
    if s["dry_run"] and s.get("estimated_bytes"):
        size += f", about {_human_bytes(s['estimated_bytes'])}"
    click.echo(f"{verb} {s['images_out']} training images{size} from {s['images_in']} source images in "
               f"{len(s['classes'])} classes ({seconds:.1f} s{rate}, {s['workers']} worker"
               f"{'s' if s['workers'] != 1 else ''}, seed {s['seed']})")
    header = ["class", "source", *(["val"] if s["val_images"] else []), *ops, "total"]
    rows = []
    for c in s["classes"]:
        per = counts["per_class_op"].get(c, {})
        rows.append([c, counts["source"][c], *([counts["val"][c]] if s["val_images"] else []),
                     *(per.get(op, 0) for op in ops), counts["train"][c]])
    rows.append(["total", s["images_in"], *([s["val_images"]] if s["val_images"] else []),
                 *(counts["per_op"][op] for op in ops), s["images_out"]])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  " + "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                                    for i, (v, w) in enumerate(zip(r, widths))))
    ratio = s["imbalance_ratio"]
    # None after: a dry run of a recipe that makes no training image here, which a run refuses
    after = f"{ratio['train']} after" if ratio["train"] is not None else \
        "no training image after: a run is refused (set copies or keep_originals: true)"
    click.echo(f"imbalance (largest/smallest class): {ratio['source']} in the source, {after}"
               + ((" (mixed images of two classes counted by each label's odds: a run's counts differ by chance)"
                   if s["dry_run"] else " (mixed images counted under their majority label)")
                  if any(op in ops for op in ("mixup", "cutmix", "ricap")) else ""))
    from augexpand.orientation import orientation_note

    turn = orientation_note(s.get("orientation") or {})
    if turn:
        click.echo(turn)
    for note in s.get("notes", []):  # what `size: auto`, `format: auto` and `zoom: auto` became, and why, and gates
        if note.startswith(("output size auto", "format auto", "zoom auto", "small output")):
            click.echo(note)
    if s["skipped"]:
        click.echo(f"skipped {len(s['skipped'])} file(s) or folder link(s), each named above with its reason (and in "
                   f"dataset.json)" + (f"; {plural(s['images_not_made'], 'planned image')} that needed one of them "
                                       f"not made" if s.get("images_not_made") else ""))
    copies = (s.get("duplicate_sources") or {}).get("copies")
    if copies:
        groups = s["duplicate_sources"]["groups"]
        click.echo(("duplicates: 1 source image is a byte-identical copy of another" if copies == 1 else
                    f"duplicates: {copies} source images are byte-identical copies of others")
                   + f" ({plural(groups, 'group')}, listed in dataset.json)"
                   + ("; each group is held out or trained on whole, never split" if s["val_images"] else ""))
    if s["converted_to_rgb8"]:
        kinds = ", ".join(f"{n} {k}" for k, n in s["converted_to_rgb8"].items())
        click.echo(f"converted to 8-bit RGB: {kinds}")
    scaled = {k: n for k, n in s.get("decode_scales", {}).items() if k != "1"}
    if scaled:  # camera-size JPEGs decoded smaller, where the output needs no more pixels
        click.echo("decoded at reduced scale: " + ", ".join(f"{n} at 1/{k}" for k, n in scaled.items()))
    if s["resumed_rows"]:
        click.echo(f"resumed: {s['resumed_rows']} images were already done")
    if s.get("shard"):
        sh = s["shard"]
        click.echo(f"shard {sh['index']}/{sh['count']}: {sh['rows']} of the plan's images"
                   + ("" if s["dry_run"] else f", {sh['made']} made now, {sh['resumed']} already done")
                   + "; after every shard, run `augexpand expand --resume` without --shard to write the manifest")
    elif not s["dry_run"]:
        val = ", val/" if s["val_images"] else ""
        click.echo(f"wrote {s['dst']}/train/ (metadata.jsonl){val}, dataset.json")


@cli.command("recipes", context_settings=CONTEXT)
@json_option
def recipes_command(as_json: bool) -> None:
    """List the builtin recipes (use their names with --recipe).

    \b
    Example:
      augexpand recipes
      augexpand expand --recipe balance src/ dst/
    """
    import yaml

    from augexpand.recipe import builtin_recipes

    items = []
    for name, path in builtin_recipes().items():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            data = {}
        items.append({"name": name, "path": str(path), "description": data.get("description", "")})
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    width = max(len(i["name"]) for i in items)
    for i in items:
        click.echo(f"{i['name'].ljust(width)}  {i['description']}")
    click.echo(f"\n(files in {Path(items[0]['path']).parent})")


@cli.command("validate", context_settings=CONTEXT)
@click.argument("recipe", metavar="RECIPE")
@json_option
def validate_command(recipe: str, as_json: bool) -> None:
    """Check a recipe (a file or a builtin name) without reading any image.

    \b
    Example:
      augexpand validate my_recipe.yaml
      augexpand validate heavy --json
    """
    from augexpand.recipe import AutoSize, load_recipe

    setup_logging(quiet=False)  # what albumentations warns about: one "warning:" line each
    r = load_recipe(recipe)
    compose = r.pipeline_dict["transform"]
    n = _count_transforms(compose) - 1
    info = {
        "ok": True,
        "recipe": r.source,
        "transforms": n,
        "mix": list(r.mix.enabled()),
        "oversample": r.oversample.method if r.oversample else None,
        "policy": r.policy.model_dump(mode="json") if r.policy else None,
        "output": r.output.model_dump(mode="json"),
        "orientation": r.orientation,
        "zoom": r.zoom,
        "seed": r.seed,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out = r.output
    if isinstance(out.size, AutoSize):
        size = f"auto (at most {out.size.auto[0]}x{out.size.auto[1]}, the sources' median short side if smaller)"
    else:
        size = f"{out.size[0]}x{out.size[1]}" if out.size else "native size"
    policy = ""
    if r.policy:
        settings = [f"{k} {v}" for k, v in (("num_ops", r.policy.num_ops), ("magnitude", r.policy.magnitude))
                    if v is not None] + ({True: ["upright"], "auto": ["upright: auto"]}.get(r.policy.keep_orientation, []))
        policy = f", policy: {r.policy.name}" + (f" ({', '.join(settings)})" if settings else "")
    extras = "".join([f", mix: {', '.join(info['mix'])}" if info["mix"] else "",
                      f", oversample: {info['oversample']}" if info["oversample"] else "", policy])
    turn = {"auto": "auto (decided from the images: no flips or large rotations when mirror images do not look "
                    "like their class)", "keep": "keep (no flips, rotations within 10 deg)",
            "free": "free (flips and rotations as written)"}[r.orientation]
    fmt = ", format auto (png for lossless sources, jpg otherwise)" if out.format == "auto" else f" {out.format}"
    zoom = "; zoom: auto (crops never magnify the sources)" if r.zoom == "auto" else ""
    click.echo(f"ok: {r.source}: {n} transform(s){extras}; output {size}{fmt}, seed {r.seed}; "
               f"orientation: {turn}{zoom}")


def _count_transforms(node: dict) -> int:
    return 1 + sum(_count_transforms(t) for t in node.get("transforms", []) or [])


@cli.command("example", context_settings=CONTEXT)
@click.argument("dst", type=click.Path(path_type=Path), metavar="DIR")
def example_command(dst: Path) -> None:
    """Write the built-in example dataset (real photos, 4 imbalanced classes) to DIR as an ImageFolder.

    \b
    Example:
      augexpand example photos/
      augexpand expand --recipe heavy photos/ out/
    """
    from augexpand.example import write_example

    counts = write_example(dst)
    detail = ", ".join(f"{k} {v}" for k, v in counts.items())
    click.echo(f"wrote {sum(counts.values())} images in {len(counts)} classes to {dst} ({detail})")



@cli.command("preview", context_settings=CONTEXT)
@click.argument("src", required=False, type=click.Path(path_type=Path), metavar="SRC")
@click.option("-r", "--recipe", default="light", show_default=True, metavar="NAME|PATH",
              help="A recipe YAML file, or a builtin recipe name (see `augexpand recipes`).")
@click.option("--example", is_flag=True, help="Use the built-in example dataset as SRC.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The sheet to write: .png (or .jpg, .webp).")
@click.option("-n", "--samples", type=click.IntRange(1, 24), default=6, show_default=True,
              help="Samples per op (one row per op).")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), help="Seed (overrides the recipe's; also picks the samples).")
@click.option("--tile", type=click.IntRange(32, 512), default=160, show_default=True,
              help="Tile side in pixels.")
@max_pixels_option
@json_option
def preview_command(src, recipe, example, out, samples, seed, tile, max_pixels, as_json):
    """Draw a contact sheet of what a recipe makes from SRC, without writing a dataset.

    One row per op the recipe produces (original, augment, smote or duplicate, each mix method), a few
    samples each, captioned with their label(s) and weights, lambda, areas or SMOTE gap. The tiles are made
    by the same code as `augexpand expand`, from the same plan; only their sources are decoded.

    \b
    Example:
      augexpand preview --recipe heavy --example -o preview.png
      augexpand preview -r my_recipe.yaml photos/ -o grid.png --samples 8 --seed 3
    """
    from augexpand.folder import limit_opencv_pixels

    limit_opencv_pixels(max_pixels)  # before anything loads OpenCV (it reads its limit once, when it loads)
    from augexpand.preview import preview

    if example == (src is not None):
        raise click.UsageError("give SRC or --example (not both)" if example else "expected SRC (or --example)")
    require_path(src, "SRC")
    setup_logging(as_json)
    summary = preview(src, out, recipe, samples=samples, seed=seed, tile=tile, max_pixels=max_pixels)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        shown = ", ".join(f"{s['op']} {len(s['samples'])}" for s in summary["ops"])
        click.echo(f"wrote {summary['output']} ({summary['width']}x{summary['height']}): {shown}")


@cli.command("inspect", context_settings=CONTEXT)
@click.argument("folder", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--plot", type=click.Path(path_type=Path), metavar="PNG",
              help="Also draw the counts as a bar chart: .png, .svg or .pdf, outside a source DIR.")
@json_option
def inspect_command(folder, plot, as_json):
    """Print the class counts of DIR: a source ImageFolder, or an `augexpand expand` output.

    For an output folder: images per class and per op (from train/metadata.jsonl), the soft-label
    share of each class, val counts and the source counts. Always: the imbalance ratio (largest over
    smallest class). A source folder is counted by file extension, without opening any image.

    \b
    Example:
      augexpand inspect photos/
      augexpand inspect out/ --plot counts.png
      augexpand inspect out/ --json
    """
    from augexpand.inspection import format_report, inspect_folder, plot_counts

    require_path(folder, "DIR")
    setup_logging(quiet=False)  # notes (a chart's missing glyphs) as one line each
    report = inspect_folder(folder)
    if plot is not None:
        report["plot"] = str(plot_counts(report, plot))
    text = json.dumps(report, indent=2, ensure_ascii=False) if as_json else format_report(report)
    click.echo(printable(text))


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):  # FloatRange lets nan through (every comparison with it is false)
        raise click.BadParameter(f"expected a number of minutes, got {value}")
    return value


@cli.command("tune", context_settings=CONTEXT)
@click.argument("src", required=False, type=click.Path(path_type=Path), metavar="SRC")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), metavar="YAML",
              help="Write the winning recipe here (with its scores in a header comment).")
@click.option("--example", is_flag=True, help="Use the built-in example dataset as SRC.")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="MINUTES", callback=_finite, help="Wall-clock budget of the search.")
@click.option("-c", "--candidate", "candidates", multiple=True, metavar="NAME|PATH",
              help="Also score this recipe (a file or a builtin name); repeatable.")
@click.option("--only", is_flag=True, help="Score only the --candidate recipes (and no expansion).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the splits, the expansions and the proxy trainings.")
@click.option("--folds", type=click.IntRange(2, 10), default=3, show_default=True,
              help="Each split holds out one of this many stratified folds of the source images.")
@click.option("--steps", type=click.IntRange(10, 10000), default=100, show_default=True,
              help="Optimizer steps of every proxy training (the same for every candidate).")
@click.option("--flip/--no-flip", default=None,
              help="On-the-fly horizontal flip in the proxy trainings, as `augexpand train --flip/--no-flip` "
                   "[default: as train decides: off where mirror images are another class, by expand's orientation test].")
@click.option("--plot", type=click.Path(path_type=Path), metavar="PNG",
              help="Draw the scores as a bar chart: .png, .svg or .pdf, outside SRC.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table.")
@json_option
def tune_command(src, out, example, budget, candidates, only, seed, folds, steps, flip, plot, quiet, as_json):
    """Pick the recipe that trains the best model on SRC's own images.

    Candidate recipes (light, heavy, the augmentation policies, with and without flips and mixing, any
    --candidate, and no expansion as the baseline) are scored by short proxy trainings (smallcnn, the train
    command's own loop, the same steps for every candidate) on stratified splits of SRC: only the training
    part of a split is expanded, and the held-out images score balanced accuracy as they are. Successive
    halving spends the --budget on the promising candidates. The winner is written to -o only if it beat no
    expansion reliably (a one-sided paired t-test at 10 % over the splits); otherwise the no-expansion recipe
    is. Deterministic for a seed (when the budget lets the same rungs run). Ctrl-C stops and keeps the best so
    far (exit 130).

    \b
    Example:
      augexpand tune --example -o best.yaml --budget 3
      augexpand tune photos/ -o best.yaml --plot scores.png
      augexpand tune digits/ -o best.yaml -c my_recipe.yaml --no-flip --json
    """
    from augexpand.train.cli import _need_torch

    _need_torch()
    from augexpand.tune import default_candidates, format_table, plot_scores, resolve_candidate, tune, winner_yaml

    if example == (src is not None):
        raise click.UsageError("give SRC or --example (not both)" if example else "expected SRC (or --example)")
    require_path(src, "SRC")
    require_output_file(out, "'-o' / '--output'", inside=src)
    require_output_file(plot, "'--plot'", (".png", ".svg", ".pdf"), inside=src)
    if only and not candidates:
        raise click.UsageError("--only needs at least one --candidate")
    _refuse_same_file(out, plot, candidates)
    extra, taken = [], {c.name for c in default_candidates()}
    for spec in candidates:
        try:
            c = resolve_candidate(spec, set() if only else taken)
        except AugexpandError as exc:
            raise click.BadParameter(str(exc), param_hint="--candidate") from None
        extra.append(c)
        taken.add(c.name)
    setup_logging(quiet or as_json)
    progress = not quiet and not as_json and sys.stderr.isatty()
    summary = tune(src, candidates=extra if only else None, extra=None if only else extra, budget_minutes=budget,
                   seed=seed, folds=folds, steps=steps, flip=flip, progress=progress)
    if out is not None:
        from augexpand.folder import write_file

        write_file(out, winner_yaml(summary))
        summary["output"] = str(out)
    if plot is not None and any(r.get("mean") is not None for r in summary["candidates"]):
        summary["plot"] = str(plot_scores(summary, plot))
    elif plot is not None:  # interrupted in the first training
        click.echo("note: nothing was scored: no chart drawn", err=True)
    if as_json:
        click.echo(json_text(summary))
    elif not quiet:
        _print_tune_summary(summary, format_table(summary))
    if summary["interrupted"]:
        sys.exit(130)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also a hard link or another spelling of the same file
    except OSError:
        return a.resolve() == b.resolve()


def _refuse_same_file(out: Path | None, plot: Path | None, candidates: tuple[str, ...]) -> None:
    """-o never replaces a --candidate recipe (the winner is often the no-expansion recipe: the user's recipe was
    lost), and -o and --plot are two files (the chart replaced the recipe)."""
    if out is None:
        return
    for spec in candidates:
        if Path(spec).is_file() and _same_file(out, Path(spec)):
            raise click.BadParameter(f"{out} is the --candidate recipe {spec}, which the winner would replace; "
                                     "write it to another file", param_hint="'-o' / '--output'")
    if plot is not None and _same_file(out, plot):
        raise click.UsageError(f"-o and --plot name the same file ({out}); give two files")


def _print_tune_summary(s: dict, table: str) -> None:
    p = s["proxy"]
    rivals = [r for r in s["candidates"] if r["name"] != "none"]
    scored = [r for r in rivals if r["splits"]]
    click.echo(f"Scored {len(scored)} of {len(rivals)} candidates and no expansion on {s['src']} in {s['seconds']:.0f} s "
               f"(budget {s['budget_minutes']:g} min): balanced accuracy on held-out images, {p['model']} at "
               f"{p['size']}x{p['size']}, {p['steps']} steps of {p['batch_size']}, {p['folds']}-fold splits, "
               f"seed {s['seed']}")
    click.echo(table)
    if s["interrupted"]:
        click.echo("interrupted: the pick is the best so far")
    elif s["stopped_by_budget"]:
        click.echo("the budget ended the search (a larger --budget scores the leaders on more splits)")
    if s["helps"]:
        click.echo(f"pick: {s['pick']} ({s['reason']})")
    else:
        click.echo(f"pick: no expansion: {s['reason']}")
    for key, what in (("output", "recipe"), ("plot", "chart")):
        if s.get(key):
            click.echo(f"wrote the {what} to {s[key]}")


def _register_train_commands() -> None:
    from augexpand.train.cli import evaluate_command, train_command

    cli.add_command(train_command, "train")
    cli.add_command(evaluate_command, "evaluate")


_register_train_commands()


def main() -> None:
    from augexpand import folder

    folder.QUIET_NATIVE_STDERR = True  # this process is ours: OpenCV's libpng/libjpeg complaints are kept off fd 2
    cli(prog_name="augexpand")


if __name__ == "__main__":
    sys.exit(main())
