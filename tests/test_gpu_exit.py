"""The exit hook that lets go of MUSE's GPU caches (muse/graph/gpu_exit.py): which module caches it empties."""

from __future__ import annotations

import sys
import types

import torch

from muse.graph import gpu_exit


def test_clears_private_caches_of_tensors_and_leaves_the_rest():
    mod = types.ModuleType("musefake.cache")
    mod._GRIDS = {(4, 4): torch.zeros(4, 4)}  # a cache of tensors: emptied
    mod._HANDLES = {0: [1, 2]}  # plain values (stream handles): kept
    mod._KERNEL = torch.ones(2)  # a cached object itself: dropped
    mod.PUBLIC = {1: torch.zeros(1)}  # public: not a cache of this module's, kept
    mod.Cls = torch.Tensor  # a class: kept
    sys.modules["musefake.cache"] = mod
    try:
        n = gpu_exit.clear_module_caches(holds=lambda v: isinstance(v, torch.Tensor), prefix="musefake")
    finally:
        del sys.modules["musefake.cache"]
    assert n == 2
    assert mod._GRIDS == {} and mod._KERNEL is None
    assert mod._HANDLES == {0: [1, 2]} and len(mod.PUBLIC) == 1 and mod.Cls is torch.Tensor


def test_cpu_tensors_and_modules_count_as_gpu_state_only_where_they_should():
    assert not gpu_exit._holds_gpu(torch.zeros(1))  # a CPU tensor is not the device's
    assert gpu_exit._holds_gpu(torch.nn.Linear(1, 1))  # a model may sit on the device
    assert gpu_exit._holds_gpu((torch.nn.Identity(), 3))
    assert not gpu_exit._holds_gpu({"a": 1}) and not gpu_exit._holds_gpu(3)


def test_without_cuda_the_hook_does_nothing():
    gpu_exit.release_gpu_caches()  # CUDA never initialised here: returns at once, nothing cleared
