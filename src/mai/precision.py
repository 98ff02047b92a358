"""Where a model runs and in what precision: the one place that decides device, autocast and decode dtype.

`Precision` is what a user chooses (config, CLI, lm-eval model args): fp32, bf16, or auto, which is
bf16 where the hardware computes it natively (CUDA, and CPUs with AVX512-BF16 or AMX) and fp32
elsewhere. Training and scoring keep fp32 weights under bf16 autocast; decoding casts the weights
themselves, since it reads every weight once per token and half the bytes is nearly twice the speed.
Inference (`mai generate`, `mai serve`, `mai eval`) also takes `InferencePrecision`'s int8 and int4:
weight-only quantization (model/quantize.py) with fp32 activations, on the CPU.

torch is imported inside the functions: config.py uses the `Precision` type, and every data-pipeline
worker imports config.py, about 1.5 s sooner without torch.
"""

import contextlib
from typing import TYPE_CHECKING, Literal, get_args

from mai.errors import MaiError

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
InferencePrecision = Literal["auto", "fp32", "bf16", "int8", "int4"]
INFERENCE_PRECISIONS: tuple[str, ...] = get_args(InferencePrecision)
WEIGHT_BITS = {"int8": 8, "int4": 4}


def check_precision(precision: str, option: str = "precision", allowed: tuple[str, ...] = PRECISIONS) -> None:
    """Refuse a precision outside `allowed`, for callers that take it as a plain string (lm-eval's model args)."""
    if precision not in allowed:
        raise MaiError(f"{option} must be one of {', '.join(allowed)}, not {precision!r}", parameter=option.lstrip("-"))


def weight_bits(precision: str) -> int | None:
    """8 or 4 for weight-only quantized inference (int8, int4); None for floating-point weights."""
    return WEIGHT_BITS.get(precision)


def default_device() -> "torch.device":
    """The first CUDA device when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), as torch's own kernels check."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: InferencePrecision, device: "torch.device") -> Literal["fp32", "bf16", "int8", "int4"]:
    """'auto' becomes bf16 on CUDA and on CPUs with native bf16 matmul, else fp32; the others stay."""
    check_precision(precision, allowed=INFERENCE_PRECISIONS)
    if weight_bits(precision) and device.type != "cpu":
        raise MaiError(f"{precision} weights run on the CPU's kernels; on a GPU use bf16", parameter="precision")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def autocast(device: "torch.device", precision: str):
    """A context manager computing matmuls in bf16 over fp32 weights, or doing nothing for the others."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cast_for_decoding(model: "torch.nn.Module", precision: InferencePrecision = "auto") -> "torch.nn.Module":
    """The model with its weights in the floating-point dtype it decodes in (int8 and int4 quantize fp32
    weights: loading.prepare_for_decoding)."""
    import torch

    if resolve_precision(precision, next(model.parameters()).device) == "bf16":
        model.to(torch.bfloat16)
    return model
