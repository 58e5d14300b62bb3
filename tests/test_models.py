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
