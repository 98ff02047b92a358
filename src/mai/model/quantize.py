"""Weight-only int8 and int4 quantization of a model's linear layers, for inference on the CPU.

Decoding one token reads every weight once, so on a CPU its speed is bound by the bytes of the
weights: int8 reads a quarter of fp32's, int4 an eighth. Activations, norms, attention and the KV
cache stay fp32; only the weights are stored quantized:

- int8: symmetric, one scale per output row: w ≈ q · scale, q in [-128, 127].
- int4: asymmetric, groups of 32 values along each row (as llama.cpp's q4_0 blocks), each with a
  scale and an offset: w ≈ (q - 8) · scale + zero, q in [0, 15], two to a byte.

A decoding step (a few rows) under torch.compile is written as a reduction over the input width,
which inductor fuses with the dequantization into one pass over the quantized bytes: on a 2-core
EPYC, SmolLM2's int8 head took 1.3 ms a token where fp32 took 11.9 (2026-12-03). PyTorch's own
int8/int4 CPU kernels (`aten._weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) took 5-8x
longer than fp32 for one row there, and an eager reduction would materialise rows × out × in
values, so eager calls (prefill, scoring) dequantize the weights and multiply as usual: quantized
weights decode fast only compiled (`mai generate` and `mai serve` compile them).

A tied head gets its own quantized copy of the embedding; the embedding itself stays as it is
(a lookup reads one row per token). A layer whose input width is not a whole number of groups
stays in floating point.
"""

import torch
from torch import nn

from mai.model.transformer import FusedLinear, Transformer

INT4_GROUP = 32
REDUCTION_ROWS = 16  # compiled calls with at most this many rows reduce over the quantized weights


class QuantizedLinear(nn.Module):
    """A bias-free linear layer (or a FusedLinear's several, `sizes`) with int8 or int4 weights."""

    def __init__(self, weight: torch.Tensor, bits: int, sizes: list[int] | None = None):
        super().__init__()
        self.bits, self.sizes = bits, sizes
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().float()
        if bits == 8:
            scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            self.register_buffer("qweight", torch.round(weight / scale).clamp(-128, 127).to(torch.int8))
            self.register_buffer("scales", scale)  # (out, 1)
        else:
            groups = weight.reshape(self.out_features, -1, INT4_GROUP)
            low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
            scale = ((high - low) / 15).clamp(min=1e-12)
            q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.uint8)  # (out, groups, 32)
            # each byte holds a value of the group's first half (low nibble) and its partner 16 on (high)
            self.register_buffer("qweight", q[..., :16] | (q[..., 16:] << 4))  # (out, groups, 16)
            self.register_buffer("scales", scale)  # (out, groups, 1)
            self.register_buffer("zeros", low + 8 * scale)  # what q = 8 stands for

    def weight(self) -> torch.Tensor:
        """The fp32 weights (out, in) this layer computes with."""
        if self.bits == 8:
            return self.qweight.float() * self.scales
        q = torch.cat([self.qweight & 15, self.qweight >> 4], dim=-1)  # (out, groups, 32)
        return ((q.float() - 8) * self.scales + self.zeros).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor):
        rows = x.reshape(-1, self.in_features).float()
        if torch.compiler.is_compiling() and rows.shape[0] <= REDUCTION_ROWS:
            y = self.reduce(rows)
        else:
            y = rows @ self.weight().T
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.sizes is None else y.split(self.sizes, dim=-1)

    def reduce(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (R, in) times the weights as one reduction over the quantized values, for inductor to fuse."""
        if self.bits == 8:
            return (rows[:, None, :] * self.qweight.float()).sum(dim=-1) * self.scales[:, 0]
        x = rows.reshape(rows.shape[0], 1, -1, INT4_GROUP)  # (R, 1, groups, 32)
        low, high = (self.qweight & 15).float() - 8, (self.qweight >> 4).float() - 8  # (out, groups, 16)
        half = INT4_GROUP // 2
        per_group = (x[..., :half] * low + x[..., half:] * high).sum(dim=-1)  # (R, out, groups)
        return (per_group * self.scales[..., 0] + x.sum(dim=-1) * self.zeros[..., 0]).sum(dim=-1)

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


def quantizable(weight: torch.Tensor, bits: int) -> bool:
    return bits == 8 or weight.shape[1] % INT4_GROUP == 0


@torch.no_grad()
def quantize_weights(model: Transformer, bits: int) -> Transformer:
    """The model, for CPU inference only, with every linear layer's weights in `bits` (8 or 4) bits."""
    if bits not in (8, 4):
        raise ValueError(f"weight-only quantization takes 8 or 4 bits, not {bits}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 and int4 weights run on the CPU's kernels; on a GPU decode in bf16")
    model.float()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear | FusedLinear) and quantizable(child.weight, bits):
                sizes = child.sizes if isinstance(child, FusedLinear) else None
                setattr(parent, name, QuantizedLinear(child.weight, bits, sizes))
    if model.output is None and quantizable(model.tok_embeddings.weight, bits):
        model.output = QuantizedLinear(model.tok_embeddings.weight, bits)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights the model holds in memory: parameters, and quantized layers' packed weights."""
    quantized = sum(m.weight_bytes() for m in model.modules() if isinstance(m, QuantizedLinear))
    return quantized + sum(p.numel() * p.element_size() for p in model.parameters())
