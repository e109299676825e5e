"""What makes a trial's steps cheaper without changing what they compute: the optimizer's implementation, compiled
decoder layers with few batch shapes, and the memory a trial leaves behind.

A small model at a modest batch is bound by the host: each optimizer step launches tens of thousands of small
operations, and the device waits for them (``benchmarks/step_overhead.py`` counts them). Two remedies are here:

* AdamW's fused implementation updates every adapter matrix in one kernel where torch has one for the device (CUDA,
  and the CPU in recent torch), instead of a dozen operations per matrix; the multi-tensor (``foreach``) one
  elsewhere. Its updates equal the per-matrix loop's within float rounding (``tests/finetune/test_speed.py``).
* ``torch.compile`` of each decoder layer ("regional compilation": one layer's graph serves them all, so compiling
  takes one layer's time), with batch widths rounded up to a few buckets so a new batch shape seldom recompiles.
  The compiled graphs are dropped when the trial ends (``release_compiled``).

Which of these are on by default follows their measurement (docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import logging

import torch

from lmtune._compat import uncompile
from lmtune.finetune.memory import trim_heap

log = logging.getLogger(__name__)


def adamw(params: list[torch.nn.Parameter], learning_rate: float, device: torch.device,
          fused: bool = True) -> torch.optim.AdamW:
    """AdamW without weight decay (``transformers.Trainer``'s default: decay would pull LoRA updates back to zero).

    ``fused``: torch's fused kernel where it has one for ``device``, else the multi-tensor implementation; off,
    torch's default (fused on CUDA, as lmtune always did there; the per-matrix loop on the CPU).
    """
    if not fused:
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0,
                                 **({"fused": True} if device.type == "cuda" else {}))
    try:
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0, fused=True)
    except RuntimeError:  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0, foreach=True)


def repeated_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of identical blocks (decoder or encoder layers): the longest ``ModuleList`` whose modules
    are all of one class. Empty if it has none."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best) and len(set(map(type, module))) == 1:
            best = list(module)
    return best


def compile_layers(model: torch.nn.Module) -> int:
    """``torch.compile`` each repeated layer in place (shapes static: the run buckets them); returns how many."""
    layers = repeated_layers(model)
    for layer in layers:
        layer.compile(dynamic=False)
    if not layers:
        log.warning("compile: found no stack of repeated layers in %s; running it uncompiled", type(model).__name__)
    return len(layers)


def release_compiled(model: torch.nn.Module) -> None:
    """Undo ``compile_layers`` and drop every compiled graph, so the next trial starts from the plain model."""
    for layer in repeated_layers(model):
        uncompile(layer)
    torch.compiler.reset()


def free_memory(device: torch.device) -> None:
    """Give back what a finished trial allocated: objects in reference cycles (an optimizer and its scheduler),
    the CUDA caching allocator's unused blocks, and the C heap's free pages."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    trim_heap()
