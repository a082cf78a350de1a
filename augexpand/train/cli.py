"""The ``train`` and ``evaluate`` commands. Only Click at import time: torch is imported inside the commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from augexpand._cliutil import (
    CONTEXT,
    Interrupted,
    json_option,
    json_text,
    max_pixels_option,
    printable,
    require_output_file,
    require_path,
    setup_logging,
)

__all__ = ["TRAIN_OPTIONS", "evaluate_command", "train_command"]

NEED_TORCH = "training needs torch: pip install 'augexpand[train]'"
DEVICE_HELP = "auto (a CUDA GPU when present), cpu, cuda, cuda:N, mps."
MODEL_CHOICES = ["auto", "smallcnn", "resnet18", "resnet34", "resnet50"]
MAX_RATE = 1e30  # config.MAX_RATE and MAX_MULT (this module imports only Click; a test checks they agree)
MAX_MULT = 1e6

# The command-line options that are TrainConfig fields (their defaults are TrainConfig's; a test checks it).
TRAIN_OPTIONS = (
    "val", "model", "width", "weights", "init", "size", "epochs", "steps", "repeats", "min_steps", "batch_size",
    "optimizer", "lr", "final_lr", "gamma", "momentum", "weight_decay", "warmup_epochs", "freeze_epochs",
    "head_lr_mult", "label_smoothing", "teacher", "kd_temperature", "kd_weight", "patience", "flip", "crop_pad",
    "device", "amp", "channels_last", "sync_bn", "workers", "cache", "gpu_cache", "seed",
)


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(NEED_TORCH) from None


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    v = value.strip().lower()
    if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise click.BadParameter(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")


def _progress(quiet: bool, as_json: bool) -> bool:
    return not quiet and not as_json and sys.stderr.isatty()


@click.command(context_settings=CONTEXT)
@click.argument("dst", type=click.Path(path_type=Path), required=False)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, metavar="RUN",
              help="Run folder: checkpoints, config.yaml, metrics.jsonl, curves.png, summary.json (never inside "
                   "the images it trains on).")
@click.option("--val", type=click.Path(path_type=Path), metavar="DIR",
              help="Validation ImageFolder (default: DST/val when it exists).")
@click.option("-m", "--model", type=click.Choice(MODEL_CHOICES, case_sensitive=False), default="auto",
              show_default=True, help="auto: smallcnn up to 64 px, resnet18 above (resnet50 from 100k images).")
@click.option("--width", type=click.IntRange(1, 256), default=32, show_default=True,
              help="Channels of the small CNN's first stage (with --init: that run's; another is refused).")
@click.option("--weights", type=click.Path(path_type=Path), metavar="PATH",
              help="A torchvision ResNet state dict (e.g. resnet18-5c106cde.pth); the head is replaced.")
@click.option("--init", type=click.Path(path_type=Path), metavar="RUN",
              help="Start from an earlier run's best.pt, its model and width (transfer; the head is replaced if the "
                   "classes differ).")
@click.option("--size", type=click.IntRange(8, 1024), help="Training resolution (default: the median short side "
              "of the SOURCE images DST was made from, read from DST/dataset.json, else of DST's images; at most "
              "224).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs [default: 20, see --min-steps].")
@click.option("--steps", type=click.IntRange(min=1), help="Train for this many optimizer steps (overrides --epochs).")
@click.option("--min-steps", type=click.IntRange(min=0), default=500, show_default=True,
              help="Without --epochs/--steps, a tiny set is passed over several times per epoch so that the 20 "
                   "epochs make at least this many optimizer steps: 50 images in batches of 64 make 1 step per "
                   "epoch, 20 in all; 32 passes per epoch make 25 steps, 500 in all (0: off).")
@click.option("--repeats", type=click.IntRange(min=1), help="Passes over the training set per epoch [default: 1, "
              "or what --min-steps needs].")
@click.option("-b", "--batch-size", type=click.IntRange(1, 65_536), default=64, show_default=True,
              help="Images per optimizer step (per process under torchrun).")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw", "adabound"], case_sensitive=False), default="sgd",
              show_default=True, help="SGD with Nesterov momentum, AdamW, or AdaBound (Adam whose steps are "
                                      "bounded to converge to SGD at --final-lr).")
@click.option("--lr", type=click.FloatRange(min=0, max=MAX_RATE, min_open=True),
              help="Peak learning rate of the backbone (default: sgd 0.05, adamw 2e-3, adabound 1e-3; 10x less "
                   "from pretrained weights).")
@click.option("--final-lr", type=click.FloatRange(min=0, max=MAX_RATE, min_open=True),
              help="AdaBound: the SGD rate its step bounds converge to (default: 0.1, or 0.01 from pretrained "
                   "weights; follows the schedule).")
@click.option("--gamma", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=1e-3, show_default=True,
              help="AdaBound: convergence speed of the bounds, [final_lr(1-1/(gamma t+1)), final_lr(1+1/(gamma t))].")
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="SGD momentum, or AdamW's and AdaBound's beta1.")
@click.option("--weight-decay", type=click.FloatRange(min=0, max=MAX_MULT), help="Default: sgd 5e-4, adamw 0.05 (decoupled), "
              "adabound 5e-4 (L2, as the paper); never on biases and norms.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Linear warmup, then a cosine decay to zero.")
@click.option("--freeze-epochs", type=click.IntRange(min=0), help="Train only the new head (backbone and its "
              "BatchNorm statistics frozen) for K epochs, then unfreeze (default: 1 from pretrained weights, else 0).")
@click.option("--head-lr-mult", type=click.FloatRange(min=0, max=MAX_MULT, min_open=True),
              help="The head's learning rate as a multiple of the backbone's (default: 10 from pretrained weights, "
                   "else 1).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="E: train on (1 - E) * target + E / classes (0: off).")
@click.option("--teacher", type=click.Path(path_type=Path), metavar="RUN",
              help="Distil from an earlier run's best.pt (same classes).")
@click.option("--kd-temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="With --teacher: the softmax temperature of the distillation term.")
@click.option("--kd-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --teacher: the weight of the distillation term (the rest goes to the label loss).")
@click.option("--patience", type=click.IntRange(min=0), help="Stop when val accuracy has not improved for this "
              "many epochs (default: never).")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flip on the fly (default: on, except where mirror "
              "images are another class, as for digits or text: when DST/dataset.json says the expansion kept "
              "orientation, or, without one, when expand's orientation test on the training images says so).")
@click.option("--crop-pad", type=click.FloatRange(0, 0.5), default=0.125, show_default=True,
              help="Random translation on the fly, as a fraction of the size (0 turns it off).")
@click.option("--device", default="auto", show_default=True, callback=_check_device, help=DEVICE_HELP)
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA (bf16, else fp16).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Channels-last memory format (CUDA and CPU).")
@click.option("--sync-bn", is_flag=True, default=False, help="Under torchrun on GPUs: SyncBatchNorm (statistics over all "
              "processes' batches; for per-GPU batches below about 16). Default: BatchNorm per process.")
@click.option("-w", "--workers", type=click.IntRange(min=0),
              help="Data-loading processes (default: 2 on CPU, up to 8 with a GPU).")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Decode every image once into RUN/cache (uint8, memory-mapped) instead of every epoch.")
@click.option("--gpu-cache/--no-gpu-cache", default=True, show_default=True,
              help="On CUDA, hold that cache in GPU memory when it fits in a quarter of the free memory, and gather "
              "and augment each batch there (no loader workers; the same batches).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Data order, augmentation and initial weights: the same seed repeats a CPU run.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in RUN (its config.yaml).")
@click.option("--overwrite", is_flag=True, help="Replace the run in RUN.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no per-epoch lines.")
@json_option
@max_pixels_option
@click.pass_context
def train_command(ctx: click.Context, dst: Path | None, out: Path, resume: bool, overwrite: bool, quiet: bool,
                  as_json: bool, **options) -> None:
    """Fine-tune an image classifier on DST: an `augexpand expand` output (train/ with soft labels in
    metadata.jsonl, optional val/) or any ImageFolder (one-hot labels).

    The resolution follows the SOURCE images DST was made from (32x32 digits train at 32x32 even when the
    expansion wrote them at 224), the model follows the resolution, a tiny set trains at least --min-steps
    optimizer steps, and CUDA is used when present (mixed precision, channels-last). Writes RUN/best.pt and
    RUN/last.pt (torch.load(weights_only=True)), config.yaml, metrics.jsonl and curves.png.

    Several GPUs or machines: start it with torchrun (DDP; NCCL on CUDA, gloo on CPU; rank 0 writes RUN).
    Ctrl-C stops it (exit 130) and says what RUN/last.pt (the last finished epoch) keeps for --resume.

    \b
    Example:
      augexpand train dst/ --out runs/exp1
      augexpand train dst/ --out runs/ft --model resnet18 --weights resnet18-5c106cde.pth --freeze-epochs 2
      augexpand train target/ --out runs/transfer --init runs/exp1 --epochs 10
      augexpand train --out runs/exp1 --resume --epochs 30
      torchrun --nproc_per_node 4 -m augexpand train dst/ --out runs/ddp
    """
    from augexpand.folder import limit_opencv_pixels

    limit_opencv_pixels(options.pop("max_pixels"))  # before anything loads OpenCV (it reads its limit once)
    _need_torch()
    from augexpand.train.config import make_config
    from augexpand.train.loop import train

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite cannot be used together")
    if options.get("weights") is not None and options.get("init") is not None:
        raise click.UsageError("--weights and --init cannot be used together (both give the starting weights)")
    if dst is None:
        if not resume:
            raise click.UsageError("missing argument 'DST' (only --resume may leave it out)")
        dst = _saved_data(out)
    require_path(dst, "DST")
    require_path(options.get("val"), "--val")
    for name in ("weights", "init", "teacher"):
        require_path(options.get(name), f"--{name}", folder=False)
    explicit = {name for name in options
                if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    values = {k: v for k, v in options.items() if v is not None}
    setup_logging(quiet or as_json)
    config = make_config(data=dst, out=out, progress=_progress(quiet, as_json), **values)
    from augexpand.errors import ConflictingOptionError
    from augexpand.train.distributed import FollowerAbort

    try:
        summary = train(config, resume=resume, overwrite=overwrite, explicit=explicit)
    except ConflictingOptionError as exc:  # --width 16 with an --init run of width 8
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C: what was kept (TrainingInterrupted says), exit 130
        if os.environ.get("RANK", "0") != "0":
            ctx.exit(130)  # under torchrun, rank 0 says it
        raise Interrupted(str(exc) or "interrupted") from None
    except FollowerAbort:
        # Rank 0 stops with the same error and prints it; torchrun then ends this process. Exiting first could
        # make torchrun stop rank 0 before its message is out.
        import time

        time.sleep(15)
        ctx.exit(1)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 prints the summary
    if as_json:
        click.echo(json_text(summary))
    else:
        click.echo(_summary_line(summary))
        if summary["skipped"]:  # as expand says it
            click.echo(f"skipped {len(summary['skipped'])} file(s), each named above with its reason (and in "
                       f"{summary['run']}/summary.json)")


def _saved_data(out: Path) -> Path:
    from augexpand.errors import TrainingError
    from augexpand.train.config import read_config_mapping

    try:
        return Path(read_config_mapping(out / "config.yaml")["data"])
    except (TrainingError, KeyError, TypeError):
        raise click.UsageError(f"cannot find the dataset of {out} (no readable {out}/config.yaml); give DST") from None


def _summary_line(s: dict) -> str:
    from augexpand.formatting import plural

    if s["best_val_acc"] is not None:
        head = (f"best val acc {s['best_val_acc']:.4f} at epoch {s['best_epoch']} of {s['epochs']}, "
                f"last {s['last_val_acc']:.4f}")
    else:
        head = (f"trained {plural(s['epochs'], 'epoch')} (no validation split), "
                f"last train loss {s['last_train_loss']:.4f}")
    stop = " (stopped early)" if s["stopped_early"] else ""
    resumed = s.get("resumed_at_step", 0)
    steps = plural(s["steps"], "step") + (f" ({plural(s['steps'] - resumed, 'step')} after resuming)"
                                            if resumed else "")
    return (f"{head}{stop}; {s['model']} at {s['size']}x{s['size']} on {plural(s['train_images'], 'image')}, "
            f"{steps} in {s['seconds']:.1f} s ({s['images_per_s']:.0f} img/s, {s['device']}); "
            f"wrote {s['run']}/best.pt, last.pt, metrics.jsonl, curves.png")


@click.command(context_settings=CONTEXT)
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("folder", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of RUN (RUN may also be a .pt file).")
@click.option("--device", default="auto", show_default=True, callback=_check_device, help=DEVICE_HELP)
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per batch; fewer above 224x224 (at most 256 images' worth of 224x224 pixels).")
@click.option("-w", "--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Data-loading processes.")
@click.option("--png", type=click.Path(path_type=Path), metavar="PATH",
              help="Where to draw the confusion matrix: .png, .svg or .pdf, outside DIR (default: "
                   "RUN/confusion_<DIR name>.png).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the line of scores.")
@json_option
@max_pixels_option
def evaluate_command(run: Path, folder: Path, which: str, device: str, batch_size: int, workers: int,
                     png: Path | None, quiet: bool, as_json: bool, max_pixels: int) -> None:
    """Score a trained RUN on the ImageFolder DIR: top-1 accuracy, balanced accuracy (mean per-class recall),
    macro-F1, per-class recall, precision and F1, and the confusion matrix.

    DIR's classes must be among the run's classes. RUN may be a run folder or a .pt checkpoint.

    \b
    Example:
      augexpand evaluate runs/exp1 test/
      augexpand evaluate runs/exp1 dst/val --checkpoint last --json > scores.json
    """
    from augexpand.folder import limit_opencv_pixels

    limit_opencv_pixels(max_pixels)  # before anything loads OpenCV (it reads its limit once)
    _need_torch()
    from augexpand.train.evaluate import evaluate_run, format_report, plot_confusion

    require_path(run, "RUN", folder=False)
    require_path(folder, "DIR")
    require_output_file(png, "'--png'", (".png", ".svg", ".pdf"), folder, "the evaluation folder")
    if png is None:
        base = run if run.is_dir() else run.parent
        name = os.fsencode(folder.resolve().name or "dir")[:200]  # room in a file name's 255 bytes
        png = base / f"confusion_{os.fsdecode(name)}.png"
        if folder.resolve() in png.resolve().parents:  # DIR/d0/model.pt: the chart became an image of class d0
            raise click.UsageError(f"the confusion matrix would be drawn in {printable(str(png))}, inside the "
                                   f"evaluation folder {printable(str(folder))}, whose images are never written to; "
                                   "give --png PATH outside it")
    setup_logging(quiet or as_json)
    result = evaluate_run(run, folder, which, device, batch_size, workers)
    plot_confusion(result, png)  # a refusal is one DestinationError line, naming the path
    result["confusion_png"] = str(png)
    if as_json:
        click.echo(json_text(result))
    elif quiet:
        click.echo(f"top-1 accuracy {result['accuracy']:.4f} on {result['images']} images, balanced accuracy "
                   f"{result['balanced_accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}")
    else:
        click.echo(printable(format_report(result)))
        click.echo(f"\nconfusion matrix drawn in {png}")
