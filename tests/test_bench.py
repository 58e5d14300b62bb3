"""`study bench`: real tiny measurements stored in a real SQLite file, then read by `study plan`."""

from __future__ import annotations

import json

import pytest
import torch

from scaling_study import db
from scaling_study.bench import gemm_shapes, train_flops_per_example
from scaling_study.formatting import hours as _hours
from scaling_study.models import parse_model

from tiny_datasets import write_idx

GRID = """
[study]
name = "bench-test"

[data.pretrain]
dataset = "fashion-mnist"
path = "/nowhere"  # bench never reads the data: synthetic images of the dataset's shape

[grid]
models = ["B-1/Wi-32", "B-1/Wi-16"]
examples = [1000]
epochs = [1, 2]

[train]
batch_size = 64
precision = "fp32"
"""


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(GRID)
    return path


def flat(result) -> str:
    return " ".join(result.output.split())


def test_bench_stores_calibrations_then_plan_prints_hours(cli, db_url, grid):
    before = cli("plan", grid, "--db", db_url)
    assert before.exit_code == 0, before.output
    assert "no hours yet: `study bench" in flat(before) and "measures this machine's speed first" in flat(before)

    first = cli("bench", grid, "--models", "B-1/Wi-32", "--steps", "3", "--device", "cpu", "--db", db_url)
    assert first.exit_code == 0, first.output
    assert "B-1/Wi-32" in first.output and "MFU" in first.output
    assert "evaluation not measured: " in flat(first) and "/nowhere" in flat(first)  # no data here: said, not guessed
    partial = cli("plan", grid, "--db", db_url)
    assert "hours" not in partial.output.replace("no hours yet", "")  # not every model is calibrated yet
    assert "no hours yet: B-1/Wi-16 not measured at this resolution and batch size" in flat(partial)

    second = cli("bench", grid, "--models", "B-1/Wi-16", "--steps", "3", "--device", "cpu", "--db", db_url)
    assert second.exit_code == 0, second.output
    rows, _ = db.latest_calibrations(db.connect(db_url), 28, 1, 64)
    assert sorted(rows) == ["B-1/Wi-16", "B-1/Wi-32"]
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["mfu"] > 0 and row["peak_memory_bytes"] >= 0
        assert row["precision"] == "fp32" and row["device"].startswith("cpu")
        details = json.loads(row["details"])
        assert details["loader_images_per_s"] > 0 and details["gemm_flops_per_s"] > 0
        assert details["steps"] == 3 and "peak_memory" in details
        assert details["evaluation_s"] is None and details["evaluation"].startswith("not measured")

    after = cli("plan", grid, "--db", db_url)
    assert after.exit_code == 0, after.output
    assert "hours" in after.output and "estimated" in flat(after) and "hours of training on cpu" in flat(after)
    assert "evaluation not measured for B-1/Wi-32, B-1/Wi-16" in flat(after)


def test_bench_times_an_evaluation_point_and_plan_adds_it(cli, db_url, tmp_path):
    data = tmp_path / "fashion"
    write_idx(data, n_train=200, n_test=50, side=28)
    grid = tmp_path / "evaluated.toml"
    grid.write_text(GRID.replace("/nowhere", str(data)).replace("[1000]", "[100]") + f"""
[[data.downstream]]
dataset = "fashion-mnist"
path = "{data}"
protocol = "linear"

[evaluation]
probe = "fast"
""")
    result = cli("bench", grid, "--steps", "2", "--device", "cpu", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "s/point" in flat(result) and "not measured" not in flat(result)
    rows, _ = db.latest_calibrations(db.connect(db_url), 28, 1, 64)
    per_point = {name: json.loads(row["details"])["evaluation_s"] for name, row in rows.items()}
    assert all(json.loads(row["details"])["evaluation"].endswith("second call") for row in rows.values())
    assert sorted(per_point) == ["B-1/Wi-16", "B-1/Wi-32"] and all(s > 0 for s in per_point.values())
    train_h = sum(100 * 2 / rows[name]["images_per_s"] / 3600 for name in rows)  # N * T per model
    eval_h = sum(2 * s / 3600 for s in per_point.values())  # 2 evaluation points per model (T = 1, 2)

    planned = cli("plan", grid, "--db", db_url)
    assert planned.exit_code == 0, planned.output
    assert (f"estimated {_hours(train_h + eval_h)} hours on cpu" in flat(planned)
            and f"{_hours(train_h)} of training and {_hours(eval_h)} of evaluation at 4 points" in flat(planned))

    skipped = cli("bench", grid, "--models", "B-1/Wi-16", "--steps", "2", "--no-evaluation", "--db", db_url)
    assert skipped.exit_code == 0 and "evaluation not measured: --no-evaluation" in flat(skipped)
    partial = flat(cli("plan", grid, "--db", db_url))
    assert "hours of training and some evaluation on cpu" in partial and "evaluation not measured for B-1/Wi-16" in partial


def test_plan_estimates_from_one_device_and_on_picks_it(cli, db_url, grid):
    """Calibrations from two machines in one database (a CPU here, a GPU row as `study bench`
    writes it there): the hours come from one device, the newest unless --on names another."""
    measured = cli("bench", grid, "--steps", "2", "--device", "cpu", "--no-evaluation", "--db", db_url)
    assert measured.exit_code == 0, measured.output
    engine = db.connect(db_url)
    cpu, _ = db.latest_calibrations(engine, 28, 1, 64)
    cpu_name = next(iter(cpu.values()))["device"]
    gpu_rate = {"B-1/Wi-32": 2.0e6, "B-1/Wi-16": 4.0e6}
    db.add_calibration(engine, device="NVIDIA H200", model="B-1/Wi-32", resolution=28, channels=1, batch_size=64,
                       precision="bf16", images_per_s=gpu_rate["B-1/Wi-32"], mfu=0.5, peak_memory_bytes=0,
                       details=json.dumps({"evaluation_s": None}))
    gpu_only = flat(cli("plan", grid, "--db", db_url))  # one GPU model measured: no mixing in the CPU's other one
    assert "no hours yet: B-1/Wi-16 not measured at this resolution and batch size on NVIDIA H200" in gpu_only
    db.add_calibration(engine, device="NVIDIA H200", model="B-1/Wi-16", resolution=28, channels=1, batch_size=64,
                       precision="bf16", images_per_s=gpu_rate["B-1/Wi-16"], mfu=0.5, peak_memory_bytes=0,
                       details=json.dumps({"evaluation_s": None}))
    rows, devices = db.latest_calibrations(engine, 28, 1, 64)
    assert devices == ["NVIDIA H200", cpu_name] and {row["device"] for row in rows.values()} == {"NVIDIA H200"}

    gpu_h = sum(1000 * 2 / rate / 3600 for rate in gpu_rate.values())  # N * T images per model
    newest = flat(cli("plan", grid, "--db", db_url))
    assert f"estimated {_hours(gpu_h)} hours of training on NVIDIA H200" in newest
    assert f"also measured on {cpu_name} (`--on` picks one)" in newest
    cpu_h = sum(1000 * 2 / row["images_per_s"] / 3600 for row in cpu.values())
    on_cpu = flat(cli("plan", grid, "--on", "CPU", "--db", db_url))
    assert f"estimated {_hours(cpu_h)} hours of training on {cpu_name}" in on_cpu
    nowhere = cli("plan", grid, "--on", "A100", "--db", db_url)
    assert nowhere.exit_code == 0 and "hours" not in nowhere.output.replace("no hours yet", "")
    assert f"no device measured at this resolution and batch size matches --on 'A100' (NVIDIA H200; {cpu_name})" in flat(nowhere)
    engine.dispose()


def test_bench_refuses_a_model_not_in_the_grid(cli, db_url, grid):
    result = cli("bench", grid, "--models", "B-9/Wi-7", "--db", db_url)
    assert result.exit_code == 2
    assert "model 'B-9/Wi-7' is not in" in flat(result) and "B-1/Wi-32, B-1/Wi-16" in flat(result)
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_refuses_cuda_where_there_is_none(cli, db_url, grid):
    result = cli("bench", grid, "--device", "cuda", "--db", db_url)
    assert result.exit_code == 2 and "no CUDA GPU" in flat(result)


def test_train_flops_are_the_gemms_flops():
    model = parse_model("B-2/Wi-16", "test")
    shapes = gemm_shapes(model, 784, 10, 64)
    assert sum(2 * m * k * n for m, k, n in shapes) == 64 * train_flops_per_example(model, 784, 10)
