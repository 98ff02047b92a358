"""Weight-only int8 and int4: what the quantized layers compute, eager and compiled, and the CLI that uses them."""

import pytest
import torch
from torch import nn

from conftest import run_mai
from mai.model.quantize import INT4_GROUP, QuantizedLinear


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_weights_are_within_half_a_step_of_the_originals(bits):
    weight = torch.randn(48, 4 * INT4_GROUP)
    layer = QuantizedLinear(weight, bits)
    if bits == 8:  # a step is the row's largest magnitude over 127
        step = weight.abs().amax(1, keepdim=True) / 127
    else:  # the group's range over 15
        groups = weight.reshape(48, -1, INT4_GROUP)
        step = ((groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15).expand_as(groups).reshape(48, -1)
    assert ((layer.weight() - weight).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(5, 4 * INT4_GROUP)
    torch.testing.assert_close(layer(x), x @ layer.weight().T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [8, 4])
def test_the_compiled_reduction_computes_what_the_eager_matmul_does(bits):
    layer = QuantizedLinear(torch.randn(40, 2 * INT4_GROUP), bits, sizes=[24, 16])
    x = torch.randn(3, 1, 2 * INT4_GROUP)
    compiled = torch.compile(nn.Sequential(layer), dynamic=False)
    for got, expected in zip(compiled(x), layer(x), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_generate_and_eval_take_quantized_precisions(trained_run, tmp_path, precision):
    args = ["--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "8", "--precision", precision]
    result = run_mai("generate", str(trained_run.path), *args)
    assert result.stdout.startswith("ROMEO:") and "compiling the decode step" in result.stderr
    out = tmp_path / "eval.json"
    run_mai(
        "eval",
        str(trained_run.path),
        "--tasks",
        "arc_easy",
        "--limit",
        "4",
        "--precision",
        precision,
        "--out",
        str(out),
    )
    assert f'"precision": "{precision}"' in out.read_text().replace('":"', '": "')
