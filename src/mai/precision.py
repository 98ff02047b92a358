"""Where a model runs and in what precision: the one place that decides device, autocast and decode dtype.

`Precision` is what a user chooses (config, CLI, lm-eval model args): fp32, bf16, or auto, which is
bf16 where the hardware computes it natively (CUDA, and CPUs with AVX512-BF16 or AMX) and fp32
elsewhere. Training and scoring keep fp32 weights under bf16 autocast; decoding casts the weights
themselves, since it reads every weight once per token and half the bytes is nearly twice the speed.

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


def check_precision(precision: str, option: str = "precision") -> None:
    """Refuse a precision outside `Precision`, for callers that take it as a plain string (lm-eval's model args)."""
    if precision not in PRECISIONS:
        raise MaiError(
            f"{option} must be one of {', '.join(PRECISIONS)}, not {precision!r}", parameter=option.lstrip("-")
        )


def default_device() -> "torch.device":
    """The first CUDA device when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), as torch's own kernels check."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: Precision, device: "torch.device") -> Literal["fp32", "bf16"]:
    """'auto' becomes bf16 on CUDA and on CPUs with native bf16 matmul, else fp32; the others stay."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def autocast(device: "torch.device", precision: Literal["fp32", "bf16"]):
    """A context manager computing matmuls in bf16 over fp32 weights, or doing nothing for fp32."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cast_for_decoding(model: "torch.nn.Module", precision: Precision = "auto") -> "torch.nn.Module":
    """The model with its weights in the precision it decodes in; `mai generate` and `mai serve` both
    cast through here, so their greedy outputs agree."""
    import torch

    if resolve_precision(precision, next(model.parameters()).device) == "bf16":
        model.to(torch.bfloat16)
    return model
