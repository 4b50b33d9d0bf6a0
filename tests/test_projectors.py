"""DWAKDProjectors: the four linear maps between the two spaces, saved and loaded by name."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hf_dwakd.projectors import DWAKDProjectors


def test_four_linear_maps_with_the_method_shapes():
    projectors = DWAKDProjectors(student_hidden_size=8, teacher_hidden_size=12)
    expected = {"query": (16, 24), "t2s": (12, 8), "s2t": (8, 12), "embed_t2s": (12, 8)}
    for name, (fan_in, fan_out) in expected.items():
        layer = getattr(projectors, name)
        assert isinstance(layer, nn.Linear)
        assert (layer.in_features, layer.out_features) == (fan_in, fan_out)
    assert all(parameter.requires_grad for parameter in projectors.parameters())


def test_state_dict_saves_and_loads_by_name(tmp_path):
    torch.manual_seed(0)
    projectors = DWAKDProjectors(8, 12)
    names = {f"{layer}.{kind}" for layer in ("query", "t2s", "s2t", "embed_t2s") for kind in ("weight", "bias")}
    assert set(projectors.state_dict()) == names
    save_file(projectors.state_dict(), tmp_path / "projectors.safetensors")

    torch.manual_seed(1)
    restored = DWAKDProjectors(8, 12)
    assert not torch.equal(restored.t2s.weight, projectors.t2s.weight)
    restored.load_state_dict(load_file(tmp_path / "projectors.safetensors"))
    inputs = torch.randn(3, 12)
    assert torch.equal(restored.t2s(inputs), projectors.t2s(inputs))
    for name, value in projectors.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)


def test_loading_into_other_sizes_fails_loudly():
    with pytest.raises(RuntimeError, match="size mismatch"):
        DWAKDProjectors(8, 16).load_state_dict(DWAKDProjectors(8, 12).state_dict())


@pytest.mark.parametrize("sizes", [(0, 12), (8, -1), (8.0, 12), (True, 12)])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        DWAKDProjectors(*sizes)
