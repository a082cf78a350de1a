"""The training configuration: one pydantic model, validated once, resolved (``auto`` values filled in), saved.

``TrainConfig`` is what the user asked for; ``resolve_config()`` turns every ``auto``/``None`` into the value the
run actually uses (resolution from the data, model from resolution and dataset size, learning rate from the
optimizer and whether the backbone is pretrained), and that resolved config is written to ``RUN/config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from augexpand.errors import TrainingError

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_FINAL_LR",
    "DEFAULT_LR",
    "DEFAULT_MIN_STEPS",
    "DEFAULT_WEIGHT_DECAY",
    "MAX_BATCH",
    "MAX_EPOCH_IMAGES",
    "MAX_MULT",
    "MAX_RATE",
    "RESUMABLE_OVERRIDES",
    "TrainConfig",
    "load_config",
    "make_config",
    "read_config_mapping",
    "save_config",
]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

# Base learning rate of the backbone by (optimizer, starts from pretrained weights). The head gets
# head_lr_mult times this when the backbone is pretrained; from scratch every layer shares one rate.
DEFAULT_LR: dict[tuple[str, bool], float] = {
    ("sgd", False): 0.05,
    ("sgd", True): 0.005,
    ("adamw", False): 2e-3,
    ("adamw", True): 2e-4,
    ("adabound", False): 1e-3,
    ("adabound", True): 1e-4,
}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05, "adabound": 5e-4}
# AdaBound's final (SGD-like) rate, by whether the backbone is pretrained: the paper's 0.1, and 10x less for
# fine-tuning as with every other rate here.
DEFAULT_FINAL_LR = {False: 0.1, True: 0.01}
DEFAULT_EPOCHS = 20  # when neither --epochs nor --steps is given ...
DEFAULT_MIN_STEPS = 500  # ... with at least this many optimizer steps (a tiny set is passed over several times)

MAX_BATCH = 65_536  # images per step: already 9.9 GB of uint8 pixels at 224x224
MAX_EPOCH_IMAGES = 10_000_000  # images in an epoch of several passes (--repeats): its index order is held whole
# Rates and factors the optimizers turn into float32 scalars: lr * head_lr_mult (and lr * weight_decay) stay below
# float32's 3.4e38 (--lr 1e308 was torch's "value cannot be converted to type float without overflow" traceback at
# the first step). 1e30 still lets a run diverge on purpose.
MAX_RATE = 1e30
MAX_MULT = 1e6

# Options that may change when a run is resumed (the rest must stay as the run was started).
RESUMABLE_OVERRIDES = frozenset({"epochs", "steps", "device", "workers", "gpu_cache", "patience", "amp",
                                 "progress"})


class TrainConfig(BaseModel):
    """Everything a training run depends on. ``None`` or ``"auto"`` means: decided from the data (see resolve)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    data: Path
    out: Path
    val: Path | None = None

    model: str = "auto"
    width: Annotated[int, Field(ge=1, le=256)] = 32  # channels of the small CNN's first stage
    weights: Path | None = None
    init: Path | None = None
    size: Annotated[int, Field(ge=8, le=1024)] | None = None

    epochs: PositiveInt | None = None  # None: DEFAULT_EPOCHS
    steps: PositiveInt | None = None  # total optimizer steps; overrides epochs when given
    # None: 1, or as many passes over a tiny training set per epoch as it takes to reach min_steps optimizer steps
    # (only when epochs and steps are left to the default)
    repeats: PositiveInt | None = None
    min_steps: NonNegativeInt = DEFAULT_MIN_STEPS
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 64  # per process under torchrun
    optimizer: Literal["sgd", "adamw", "adabound"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=MAX_RATE)] | None = None
    final_lr: Annotated[float, Field(gt=0, le=MAX_RATE)] | None = None  # AdaBound's final rate (default DEFAULT_FINAL_LR)
    gamma: Annotated[float, Field(gt=0, lt=1)] = 1e-3  # AdaBound: how fast the bounds converge to final_lr
    momentum: Probability = 0.9
    weight_decay: Annotated[float, Field(ge=0, le=MAX_MULT)] | None = None
    warmup_epochs: Annotated[float, Field(ge=0)] = 1.0
    freeze_epochs: NonNegativeInt | None = None
    head_lr_mult: Annotated[float, Field(gt=0, le=MAX_MULT)] | None = None  # 10 from pretrained weights, else 1
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    teacher: Path | None = None
    kd_temperature: Annotated[float, Field(gt=0)] = 4.0
    kd_weight: Probability = 0.5
    patience: NonNegativeInt | None = None
    flip: bool | None = None  # None: off when DATA/dataset.json says orientation was kept (digits, text), else on
    crop_pad: Annotated[float, Field(ge=0, le=0.5)] = 0.125  # random translation, as a fraction of the size

    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    sync_bn: bool = False  # SyncBatchNorm under torchrun on CUDA
    workers: NonNegativeInt | None = None
    cache: bool = True
    gpu_cache: bool = True  # on CUDA, the cache in GPU memory when it fits (the same batches, see data.DeviceBatches)
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # torch.manual_seed takes 64 bits; DDP adds rank offsets
    progress: bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        v = value.strip().lower()
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        from augexpand.train.models import model_names  # torch is installed whenever a config is built

        v = value.strip().lower()
        if v == "auto" or v in model_names():
            return v
        raise ValueError(f"expected auto or one of {', '.join(model_names())}, got {value!r}")

    @model_validator(mode="after")
    def _beta1(self) -> TrainConfig:
        if self.optimizer != "sgd" and self.momentum >= 1:  # Adam divides by 1 - beta1**t
            raise ValueError(f"momentum is {self.optimizer}'s beta1 and must be below 1, got {self.momentum}")
        return self

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from weights (a torchvision file or an earlier run)."""
        return self.weights is not None or self.init is not None


def _format_errors(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        if not err["loc"]:  # a check across fields: its message names them (the input is the whole config)
            parts.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        key = ".".join(str(p) for p in err["loc"])
        parts.append(f"{key}: {err['msg']} (got {str(repr(err.get('input')))[:80]})")
    return f"bad training configuration{where}: " + "; ".join(parts)


def make_config(**values) -> TrainConfig:
    """Validate the given values into a TrainConfig; a bad value is a TrainingError that names the key."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise TrainingError(_format_errors(exc, "")) from None


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the (resolved) config as YAML, paths as strings, keys in declaration order."""
    import yaml

    from augexpand.folder import write_atomic

    data = config.model_dump(mode="json")
    write_atomic(path, yaml.safe_dump(data, sort_keys=False), sync=True)


MAX_CONFIG_BYTES = 1 << 20  # save_config writes about 1 KB


def read_config_mapping(path: Path) -> dict:
    """A config.yaml as the flat mapping of option: value that save_config writes; anything else (not UTF-8, not
    YAML, nested values such as a YAML alias bomb, nesting deeper than the parser recurses, a key given twice) is
    one TrainingError. The shape is checked on the node graph before any value is built (an alias is not expanded
    there)."""
    import yaml

    from augexpand.folder import open_regular
    from augexpand.recipe import duplicate_key

    try:
        with open_regular(path) as f:  # only a regular file: a FIFO of that name blocked the read for ever
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise TrainingError(f"{path} is not a training config (over {MAX_CONFIG_BYTES >> 20} MB)")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise TrainingError(f"{path} does not exist; is {path.parent} a training run?") from None
    except UnicodeDecodeError:
        raise TrainingError(f"cannot read {path}: it is not UTF-8 text") from None
    except OSError as exc:
        raise TrainingError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        flat = node is None or (isinstance(node, yaml.MappingNode) and all(
            isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode) for k, v in node.value))
        if not flat:
            raise TrainingError(f"{path} is not a training config (a mapping of option: value, as train writes it)")
        twice = duplicate_key(node)
        if twice is not None:  # YAML would keep the last value without a word
            key, first, line, _ = twice
            raise TrainingError(f"{path} is not a training config: it gives {key!r} twice (lines {first} and "
                                f"{line}); keep one")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrainingError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise TrainingError(f"{path} is not a training config (nested far too deep)") from None
    except (ValueError, OverflowError) as exc:  # a value YAML reads but Python cannot hold: an int of 5000 digits
        raise TrainingError(f"{path} is not a training config ({exc})") from None
    return data or {}


def load_config(path: Path) -> TrainConfig:
    """Read a config.yaml written by save_config."""
    data = read_config_mapping(path)
    try:
        return TrainConfig(**{str(k): v for k, v in data.items()})
    except ValidationError as exc:
        raise TrainingError(_format_errors(exc, f" in {path}")) from None
