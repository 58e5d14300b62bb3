"""Exact parameter counts (Table 3) and FLOPs (Table 7), cross-checked against torch itself."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scaling_study.errors import GridError
from scaling_study.models import ModelSpec, build, parse_model

TABLE_3 = {
    "B-6/Wi-256": 9.19e6,
    "B-12/Wi-256": 12.35e6,
    "B-6/Wi-512": 24.66e6,
    "B-12/Wi-512": 37.26e6,
    "B-6/Wi-1024": 74.47e6,
    "B-12/Wi-1024": 124.84e6,
}
IN21K = (64 * 64 * 3, 11_230)


@pytest.mark.parametrize("name,expected", TABLE_3.items())
def test_table_3_parameter_counts(name, expected):
    spec = parse_model(name, "test")
    assert spec.parameters(*IN21K) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("name", ["B-2/Wi-64", "S-3/Wi-48", "B-1/Wi-16"])
def test_analytic_count_equals_torch_module(name):
    spec = parse_model(name, "test")
    model = build(spec, 3 * 8 * 8, 17)
    assert sum(p.numel() for p in model.parameters()) == spec.parameters(3 * 8 * 8, 17)


def test_table_7_flops():
    spec = parse_model("B-12/Wi-768", "test")
    assert spec.flops(64 * 64 * 3, 1000) == 66_828_288  # Table 7: 66.8M
    assert spec.parameters(64 * 64 * 3, 1000) / 1e6 == pytest.approx(66.89, abs=0.01)


@pytest.mark.parametrize("name", ["B-2/Wi-64", "S-2/Wi-64"])
def test_flops_are_half_of_torch_flop_counter(name):
    """torch counts 2 FLOPs per multiply-accumulate; the paper (fvcore) counts 1."""
    spec = parse_model(name, "test")
    model = build(spec, 3 * 16 * 16, 10)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 16, 16))
    assert counter.get_total_flops() == 2 * spec.flops(3 * 16 * 16, 10)


def test_names_round_trip_and_inline_tables():
    assert parse_model("B-6/Wi-256", "x").name == "B-6/Wi-256"
    assert parse_model("S-6/Wi-1024", "x") == ModelSpec("standard", 6, 1024)
    inline = parse_model({"kind": "bottleneck", "depth": 2, "width": 8, "expansion": 2}, "x")
    assert inline.name == "B-2/Wi-8/x2"


@pytest.mark.parametrize(
    "value", ["C-6/Wi-256", "B-6/W-256", {"kind": "conv", "depth": 1, "width": 1}, {"kind": "B", "depth": 0, "width": 8}]
)
def test_bad_models_are_rejected(value):
    with pytest.raises(GridError):
        parse_model(value, "x")


# ---------------------------------------------------------------- S-MLP variants, fvcore's norms


def test_s_mlp_variants_exact_parameter_counts():
    """The paper's S-MLP: L blocks ReLU(W LN(z)); the reference code's StandardMLP: L-1 layers
    Linear(GELU(LN(z))). At 64x64x3 and 11,230 classes, S-6/Wi-1024 (d = 12,288, m = 1,024):"""
    d, m, c = 64 * 64 * 3, 1024, 11_230
    embed, head, layer = d * m + m, m * c + c, m * m + m + 2 * m
    paper, ref = parse_model("S-6/Wi-1024", "x"), parse_model("S-6/Wi-1024/ref", "x")
    assert paper.parameters(d, c) == embed + 6 * layer + head == 30_404_574
    assert ref.parameters(d, c) == embed + 5 * layer + head == 29_352_926
    assert paper.flops(d, c) - ref.flops(d, c) == m * m  # one hidden layer fewer
    for spec in (paper, ref):
        model = build(spec, 3 * 8 * 8, 17)
        assert sum(p.numel() for p in model.parameters()) == spec.parameters(3 * 8 * 8, 17)


def test_reference_s_mlp_computes_linear_gelu_layernorm_without_residual():
    spec = parse_model({"kind": "standard", "depth": 3, "width": 8, "variant": "reference"}, "x")
    assert spec.name == "S-3/Wi-8/ref" and parse_model("S-3/Wi-8/ref", "x") == spec
    model = build(spec, 12, 5)
    x = torch.randn(4, 12)
    z = model.embed(x)
    for block in model.blocks:  # depth - 1 = 2 layers
        z = block.linear(torch.nn.functional.gelu(torch.nn.functional.layer_norm(z, (8,), block.norm.weight, block.norm.bias)))
    assert len(model.blocks) == 2 and torch.equal(model(x), model.head(z))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 12))
    assert counter.get_total_flops() == 2 * spec.flops(12, 5)


@pytest.mark.parametrize("value", ["B-6/Wi-256/ref", {"kind": "B", "depth": 2, "width": 8, "variant": "reference"},
                                   {"kind": "S", "depth": 2, "width": 8, "variant": "mine"}])
def test_bad_variants_are_rejected(value):
    with pytest.raises(GridError):
        parse_model(value, "x")


@pytest.mark.parametrize("name", ["B-2/Wi-16", "S-3/Wi-16", "S-3/Wi-16/ref"])
def test_fvcore_counts_linear_layers_plus_5_flops_per_layernorm_element(name):
    """fvcore 0.1.5 (the reference code's counter) adds LayerNorm to our linear-layer count."""
    fvcore_nn = pytest.importorskip("fvcore.nn")
    spec = parse_model(name, "x")
    model = build(spec, 3 * 8 * 8, 10).eval()
    analysis = fvcore_nn.FlopCountAnalysis(model, torch.zeros(1, 3 * 8 * 8))
    analysis.unsupported_ops_warnings(False)
    assert analysis.by_operator() == {"linear": spec.flops(192, 10), "layer_norm": spec.norm_flops()}
    assert analysis.total() == spec.flops(192, 10) + spec.norm_flops()


def test_fvcore_adds_004_to_013_percent_to_table_3_and_0069_to_table_7():
    ratios = [parse_model(n, "x").norm_flops() / parse_model(n, "x").flops(*IN21K) for n in TABLE_3]
    assert 0.0004 < min(ratios) and max(ratios) < 0.0013
    b12 = parse_model("B-12/Wi-768", "x")
    assert b12.flops(64 * 64 * 3, 1000) + b12.norm_flops() == 66_874_368  # fvcore: 66.87M; Table 7 says 66.8M
