"""Where and in which number format a trial trains: the device, mixed precision, TF32 and 4-bit (QLoRA) bases.

Mixed precision follows what ``transformers.Trainer`` and PEFT do for LoRA on a GPU: the frozen base is held in
the 16-bit compute type (half the memory and bandwidth of float32), every trainable parameter (LoRA matrices,
DoRA magnitudes, a classification head) stays float32 as the optimizer's master copy, and the forward pass runs
under ``torch.autocast``. float16 also needs loss scaling (``torch.amp.GradScaler``); bfloat16 has float32's
exponent range and does not. ``auto`` picks bfloat16 on a CUDA device that supports it, float16 with a scaler on
older CUDA devices, and float32 elsewhere, so CPU runs are exactly what they were before these options existed.

QLoRA ("QLoRA: Efficient Finetuning of Quantized LLMs", Dettmers et al., arXiv:2305.14314) keeps the base in
4-bit NormalFloat with double quantization through bitsandbytes; it needs a CUDA device and the package.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lmtune.errors import InputError
from lmtune.llm import check_device

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
QUANTIZE: tuple[str, ...] = ("none", "4bit")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Variants that cannot train on a 4-bit base, with the reason given to the user.
NOT_ON_4BIT = {
    "pissa": "PiSSA initializes the adapter from an SVD of each full-precision weight and writes the residual "
             "back into it, which a 4-bit weight cannot take (PEFT raises for it); run PiSSA on a bf16/fp32 base, "
             "or quantize a saved PiSSA residual model yourself",
}


def resolve_device(device: str | None = None) -> torch.device:
    """The torch device a run trains on: ``device`` if this machine has it (else ``InputError("device", ...)``),
    or, when ``None``, the first CUDA device if there is one and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device))


@dataclass(frozen=True)
class Precision:
    """How a run computes: ``name`` (fp32, bf16 or fp16), the autocast type (None: no autocast) and whether the
    loss is scaled (float16 only)."""

    name: str
    autocast: torch.dtype | None = None
    scaled: bool = False

    @property
    def base_dtype(self) -> torch.dtype:
        """The dtype the frozen base is held in: the compute type under autocast, else float32."""
        return self.autocast or torch.float32

    def context(self, device: torch.device):
        """The autocast context for a forward pass on ``device`` (a no-op for float32)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)


def choose_precision(requested: str, device: torch.device, *, bf16_supported: bool | None = None) -> Precision:
    """The precision ``requested`` resolves to on ``device``, or ``InputError("precision", ...)``.

    ``bf16_supported`` overrides the question asked of a CUDA device (for tests on machines without one).
    float16 is refused on the CPU, as ``transformers.Trainer`` refuses it: CPUs have no fast float16 matrix
    multiply, and bfloat16 is the 16-bit type they do accelerate. MPS trains in float32 only here (its autocast
    and scaler are not tested by lmtune).
    """
    if requested not in PRECISIONS:
        raise InputError("precision", f"{requested!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if cuda and bf16_supported is None and requested in ("auto", "bf16"):
        bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
    if requested == "auto":
        requested = ("bf16" if bf16_supported else "fp16") if cuda else "fp32"
    if requested == "fp32":
        return Precision("fp32")
    if device.type not in ("cuda", "cpu"):
        raise InputError("precision", f"{requested} is not supported on {device.type} here; use fp32 or auto")
    if requested == "fp16" and not cuda:
        raise InputError("precision", f"fp16 needs a CUDA device (this run's device is {device}): CPUs have no "
                                      "fast float16 matrix multiply; use bf16 or fp32")
    if requested == "bf16" and cuda and not bf16_supported:
        raise InputError("precision", f"{device} does not support bfloat16; use fp16 or auto")
    return Precision(requested, HALF[requested], scaled=requested == "fp16")


def enable_tf32(device: torch.device) -> None:
    """Let float32 matrix multiplies and convolutions on a CUDA device use TF32 tensor cores (Ampere and later),
    as ``transformers.Trainer(tf32=True)`` does; nothing changes on other devices."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"


def prepare_hardware(device: str | None, precision: str, quantize: str = "none",
                     variants: Iterable[str] = ()) -> tuple[torch.device, Precision]:
    """Resolve and check a run's device, precision and quantization together (``InputError`` on a bad one), and
    turn TF32 on for a CUDA device."""
    resolved = resolve_device(device)
    chosen = choose_precision(precision, resolved)
    check_quantize(quantize, resolved, variants)
    enable_tf32(resolved)
    return resolved, chosen


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_quantize(quantize: str, device: torch.device, variants: Iterable[str] = (), *,
                   bitsandbytes: bool | None = None) -> None:
    """Refuse a 4-bit base where it cannot run, before anything is loaded or stored.

    ``quantize`` is ``none`` or ``4bit``; ``variants`` are the LoRA variants the run may train (PiSSA cannot
    take a 4-bit base, see ``NOT_ON_4BIT``); ``bitsandbytes`` overrides the check that the package is installed.
    """
    if quantize not in QUANTIZE:
        raise InputError("quantize", f"{quantize!r} is not allowed; allowed: {', '.join(QUANTIZE)}")
    if quantize == "none":
        return
    if not (has_bitsandbytes() if bitsandbytes is None else bitsandbytes):
        raise InputError("quantize", "4bit needs the bitsandbytes package (pip install 'lmtune[gpu]') and a CUDA "
                                     "device")
    if device.type != "cuda":
        raise InputError("quantize", f"4bit needs a CUDA device; this run's device is {device}")
    for variant in variants:
        if variant in NOT_ON_4BIT:
            raise InputError("quantize", f"variant {variant} cannot train on a 4-bit base: {NOT_ON_4BIT[variant]}")


def quantization_config(precision: Precision, skip_modules: list[str] | None = None):
    """The bitsandbytes config of a QLoRA base: NF4 with double quantization, computing in the run's 16-bit type
    (``skip_modules``, e.g. a fresh classification head, stay unquantized so they can be trained)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=precision.base_dtype,
                              llm_int8_skip_modules=skip_modules)
