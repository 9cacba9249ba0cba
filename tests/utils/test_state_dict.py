"""ovseg.utils.state_dict: excluded weights never enter checkpoints and are never needed."""

import copy
import pickle

import pytest
import torch
from torch import nn

from ovseg.utils.state_dict import exclude_from_checkpoints


class Frozen(nn.Module):
    """Stands in for the CLIP teacher: weights from elsewhere, plus a buffer."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2))


class Backbone(nn.Module):
    """Stands in for the prompted backbone: a shared frozen tower and trainable parts."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower
        self.tower_norm = nn.LayerNorm(2)  # shares "tower" as a name prefix, not as a module
        self.prompts = nn.Parameter(torch.zeros(3, 2))
        exclude_from_checkpoints(self, "tower")


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.teacher = Frozen()
        exclude_from_checkpoints(self.teacher)
        self.backbone = Backbone(self.teacher.proj)
        self.head = nn.Linear(2, 3)


TRAINABLE = {
    "backbone.tower_norm.weight",
    "backbone.tower_norm.bias",
    "backbone.prompts",
    "head.weight",
    "head.bias",
}


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_excluded_weights_are_not_in_state_dict_nor_its_metadata():
    model = Model()
    sd = model.state_dict()
    assert set(sd) == TRAINABLE
    assert not [k for k in sd._metadata if k.startswith(("teacher", "backbone.tower."))]
    assert "backbone.tower" not in sd._metadata and "backbone.tower_norm" in sd._metadata
    # the excluded modules' own state_dict() still holds them (the teacher itself is empty)
    assert set(model.teacher.proj.state_dict()) == {"weight", "bias"}
    assert model.teacher.state_dict() == {}
    assert set(model.backbone.state_dict()) == {"tower_norm.weight", "tower_norm.bias", "prompts"}


def test_a_checkpoint_without_them_loads_strictly_and_keeps_them():
    source, target = _randomised(Model(), 0), _randomised(Model(), 1)
    proj_before = {k: v.clone() for k, v in target.teacher.proj.state_dict().items()}

    result = target.load_state_dict(source.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key in TRAINABLE:
        torch.testing.assert_close(target.state_dict()[key], source.state_dict()[key])
    for key, value in target.teacher.proj.state_dict().items():
        torch.testing.assert_close(value, proj_before[key])
    torch.testing.assert_close(target.teacher.scale, torch.ones(2))
    assert "_excluded_while_loading" not in vars(target.teacher)
    assert "_excluded_while_loading" not in vars(target.backbone)


def test_an_old_checkpoint_with_them_loads_and_they_are_ignored():
    source, target = _randomised(Model(), 0), _randomised(Model(), 1)
    old = dict(source.state_dict())
    for name, tensor in source.teacher.proj.state_dict().items():
        old[f"teacher.proj.{name}"] = tensor
        old[f"backbone.tower.{name}"] = tensor
    old["teacher.scale"] = torch.full((2,), 7.0)
    proj_before = {k: v.clone() for k, v in target.teacher.proj.state_dict().items()}

    result = target.load_state_dict(old, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in target.teacher.proj.state_dict().items():
        torch.testing.assert_close(value, proj_before[key])
    torch.testing.assert_close(target.teacher.scale, torch.ones(2))


def test_other_missing_and_unexpected_keys_are_still_reported():
    model = Model()
    sd = dict(model.state_dict())
    del sd["backbone.tower_norm.weight"], sd["head.bias"]
    sd["head.extra"] = torch.zeros(1)
    result = model.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["backbone.tower_norm.weight", "head.bias"]
    assert result.unexpected_keys == ["head.extra"]
    with pytest.raises(RuntimeError, match="backbone.tower_norm.weight"):
        model.load_state_dict(sd)


def test_a_module_excluded_at_the_root_and_two_children_of_one_module():
    teacher = Frozen()
    exclude_from_checkpoints(teacher)
    assert teacher.state_dict() == {}
    assert teacher.load_state_dict({}, strict=True).missing_keys == []

    parent = nn.Module()
    parent.a, parent.b, parent.c = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)
    exclude_from_checkpoints(parent, "a")
    exclude_from_checkpoints(parent, "b")
    assert set(parent.state_dict()) == {"c.weight", "c.bias"}
    assert parent.load_state_dict(parent.state_dict(), strict=True).missing_keys == []
    assert "_excluded_while_loading" not in vars(parent)


def test_a_nested_child_name_and_a_missing_one():
    parent = nn.Module()
    parent.block = nn.Module()
    parent.block.tower, parent.block.norm = nn.Linear(1, 1), nn.LayerNorm(1)
    exclude_from_checkpoints(parent, "block.tower")
    assert set(parent.state_dict()) == {"block.norm.weight", "block.norm.bias"}
    assert parent.load_state_dict(parent.state_dict(), strict=True).missing_keys == []

    with pytest.raises(AttributeError, match="towr"):
        exclude_from_checkpoints(parent, "block.towr")


def test_removing_the_hooks_brings_the_weights_back():
    parent = nn.Module()
    parent.tower, parent.head = nn.Linear(1, 1), nn.Linear(1, 1)
    handles = exclude_from_checkpoints(parent, "tower")
    assert len(handles) == 3 and set(parent.state_dict()) == {"head.weight", "head.bias"}
    for handle in handles:
        handle.remove()
    assert set(parent.state_dict()) == {"tower.weight", "tower.bias", "head.weight", "head.bias"}


def test_copies_and_pickles_keep_the_exclusion():
    model = Model()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert set(clone.state_dict()) == TRAINABLE
        assert clone.load_state_dict(model.state_dict(), strict=True).missing_keys == []
