"""Image classifiers with no torchvision dependency: ResNet-18/34/50 and a small CNN for tiny images.

The ResNets use torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``, ``fc``),
so a torchvision checkpoint such as ``resnet18-5c106cde.pth`` loads into them as it is. Every model names its
classifier head ``fc``: the head is what a new task replaces and what ``--freeze-epochs`` trains alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from augexpand.errors import TrainingError

__all__ = [
    "HEAD",
    "MODELS",
    "ResNet",
    "SmallCNN",
    "build_model",
    "guess_resnet",
    "head_parameter_names",
    "load_backbone_weights",
    "model_names",
]

HEAD = "fc"  # the name of the classifier head in every model here


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A VGG-style CNN for tiny images (16-64 px): three stages of 3x3 conv-BN-ReLU, global pooling, a linear head."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(3, w), *_conv_bn(w, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34), named as in torchvision."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, as torchvision's v1.5), 1x1 convolutions with a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet as in torchvision (same module tree and parameter names), with a head for ``num_classes``."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_weights(self)
        for m in self.modules():  # zero-init the last BN of each block: each block starts as the identity
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# The model registry: name -> builder(num_classes, **model_args). The names are what --model takes.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": lambda num_classes, width=32, dropout=0.2: SmallCNN(num_classes, width, dropout),
    "resnet18": lambda num_classes: ResNet(BasicBlock, [2, 2, 2, 2], num_classes),
    "resnet34": lambda num_classes: ResNet(BasicBlock, [3, 4, 6, 3], num_classes),
    "resnet50": lambda num_classes: ResNet(Bottleneck, [3, 4, 6, 3], num_classes),
}


def model_names() -> list[str]:
    """The names ``--model`` accepts (besides ``auto``)."""
    return list(MODELS)


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised model from the registry."""
    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, **kwargs)


def head_parameter_names(model: nn.Module) -> set[str]:
    """The parameter names of the classifier head (trained alone while the backbone is frozen)."""
    return {name for name, _ in model.named_parameters() if name.split(".")[0] == HEAD}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from augexpand.train.checkpoint import check_tensors, read_torch_file  # checkpoint.py imports this module

    obj = read_torch_file(path, "weights file")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # one of our checkpoints
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a Lightning-style checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TrainingError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    check_tensors(obj, f"weights file {path}", finite=True)
    return {k.removeprefix("module."): v for k, v in obj.items()}


def guess_resnet(path: Path) -> str | None:
    """Which of our ResNets a torchvision-format state dict is for, or None if it is not one."""
    keys = set(_read_state_dict(path))
    if "layer1.0.conv1.weight" not in keys:
        return None
    if "layer1.0.conv3.weight" in keys:
        return "resnet50"
    return "resnet34" if "layer3.5.conv1.weight" in keys else "resnet18"


def load_backbone_weights(model: nn.Module, path: Path, keep_head: bool = False) -> dict[str, int]:
    """Load a state dict (torchvision format, or one of our checkpoints) into ``model``, all but the head.

    The head stays freshly initialised for the new classes unless ``keep_head`` (same classes, same task).
    Any missing, unexpected or wrongly shaped backbone tensor is a TrainingError naming the first of them.
    Returns how many tensors were loaded and skipped.
    """
    state = _read_state_dict(path)
    own = model.state_dict()

    def is_head(k: str) -> bool:
        return k.split(".")[0] == HEAD

    # num_batches_tracked is absent from torchvision's older checkpoints (resnet18-5c106cde.pth): not a misfit
    missing = [k for k in own if not is_head(k) and k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if not is_head(k) and k not in own]
    if missing or unexpected:
        detail = (f"missing {len(missing)} tensor(s), e.g. {missing[0]!r}" if missing else "") + \
                 ("; " if missing and unexpected else "") + \
                 (f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}" if unexpected else "")
        raise TrainingError(f"weights in {path} do not fit this {type(model).__name__}: {detail}",
                            hint="check --model (resnet18/34/50 take torchvision's ResNet checkpoints)")
    for k, v in state.items():
        if k in own and not is_head(k) and own[k].shape != v.shape:
            raise TrainingError(f"weights in {path} do not fit the model: {k!r} has shape {tuple(v.shape)}, "
                                f"the model expects {tuple(own[k].shape)}",
                                hint="check --model (resnet18/34/50 take torchvision's ResNet checkpoints)")
        if k in own and not is_head(k) and own[k].is_floating_point() and not v.is_floating_point():
            raise TrainingError(f"weights in {path} do not fit the model: {k!r} is "
                                f"{str(v.dtype).removeprefix('torch.')}, the model expects "
                                f"{str(own[k].dtype).removeprefix('torch.')}")
    load = {k: v for k, v in state.items() if k in own and not is_head(k)}
    skipped = len(state) - len(load)
    if keep_head:
        head = {k: v for k, v in state.items() if is_head(k) and k in own and own[k].shape == v.shape}
        load.update(head)
        skipped -= len(head)
    model.load_state_dict(load, strict=False)
    return {"loaded": len(load), "skipped": skipped}
