"""Models: torchvision-compatible ResNets, loading torchvision state dicts, the head swap, clear misfit errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from augexpand.errors import TrainingError
from augexpand.train.models import (
    build_model,
    guess_resnet,
    head_parameter_names,
    load_backbone_weights,
)

# Parameter counts of torchvision's resnet18/34/50 (1000 classes), and a few of their state-dict keys.
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
TORCHVISION_KEYS = {
    "resnet18": ["conv1.weight", "bn1.running_mean", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                 "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias", "fc.weight", "fc.bias"],
    "resnet50": ["layer1.0.conv3.weight", "layer1.0.bn3.weight", "layer1.0.downsample.0.weight",
                 "layer3.5.conv2.weight", "layer4.2.bn3.running_mean", "fc.weight"],
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_resnet_matches_torchvision_sizes(name):
    model = build_model(name, 1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    keys = set(model.state_dict())
    for key in TORCHVISION_KEYS.get(name, []):
        assert key in keys


def _torchvision_style_file(tmp_path: Path, name: str = "resnet18", old_format: bool = True) -> Path:
    """A state dict shaped like torchvision's download: 1000-class fc, and (old files) no num_batches_tracked."""
    torch.manual_seed(123)
    state = build_model(name, 1000).state_dict()
    if old_format:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}-5c106cde.pth"
    torch.save(state, path)
    return path


def test_torchvision_state_dict_loads_and_head_is_replaced(tmp_path):
    path = _torchvision_style_file(tmp_path)
    source = torch.load(path, weights_only=True)
    model = build_model("resnet18", 5)
    head_before = model.fc.weight.clone()
    info = load_backbone_weights(model, path)
    state = model.state_dict()
    assert info["loaded"] == len(source) - 2  # everything but fc.weight and fc.bias
    for key, value in source.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert model.fc.weight.shape == (5, 512)
    assert torch.equal(model.fc.weight, head_before)  # the new head keeps its fresh initialisation
    assert guess_resnet(path) == "resnet18"


def test_guess_resnet_tells_the_depths_apart(tmp_path):
    assert guess_resnet(_torchvision_style_file(tmp_path, "resnet34")) == "resnet34"
    assert guess_resnet(_torchvision_style_file(tmp_path, "resnet50")) == "resnet50"


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = _torchvision_style_file(tmp_path, "resnet50")
    with pytest.raises(TrainingError, match=r"do not fit this ResNet: 165 unexpected, e.g. 'layer1.0.conv3.weight'; check --model"):
        load_backbone_weights(build_model("resnet18", 3), path)


def test_shape_mismatch_is_a_clear_error(tmp_path):
    state = build_model("resnet18", 1000).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(TrainingError, match=r"'layer1.0.conv1.weight' has shape \(64, 64, 5, 5\), the model "
                                            r"expects \(64, 64, 3, 3\)"):
        load_backbone_weights(build_model("resnet18", 3), path)


def test_not_a_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"not a pickle")
    with pytest.raises(TrainingError, match="x.pth is not a PyTorch file"):
        load_backbone_weights(build_model("resnet18", 3), path)
    with pytest.raises(TrainingError, match="does not exist"):
        load_backbone_weights(build_model("resnet18", 3), tmp_path / "missing.pth")


@pytest.mark.parametrize("name", ["smallcnn", "resnet18"])
def test_head_is_fc_and_output_shape(name):
    model = build_model(name, 7)
    assert head_parameter_names(model) == {"fc.weight", "fc.bias"}
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_model_names_the_choices():
    with pytest.raises(TrainingError, match="unknown model 'vgg'; expected one of smallcnn, resnet18"):
        build_model("vgg", 3)
