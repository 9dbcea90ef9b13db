"""A model's train/eval modes and the global random stream are given back as they were."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mae.runs.torch_state import eval_mode, model_device_and_dtype, preserved_rng


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_eval_mode_gives_each_module_its_own_mode_back():
    model = small_model().train()
    model[1].eval()  # a submodule the caller froze on purpose must stay frozen
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_eval_mode_restores_modes_after_an_exception():
    model = small_model().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert all(module.training for module in model.modules())


def test_preserved_rng_restores_the_global_stream():
    state = torch.get_rng_state()
    with preserved_rng():
        torch.rand(5)
        list(DataLoader(range(4), batch_size=2))  # iterating a loader draws its base seed
    assert torch.equal(torch.get_rng_state(), state)


def test_device_and_dtype_come_from_the_first_parameters():
    model = small_model().to(torch.bfloat16)
    assert model_device_and_dtype(model) == (torch.device("cpu"), torch.bfloat16)
    assert model_device_and_dtype(nn.ReLU()) == (torch.device("cpu"), torch.float32)
