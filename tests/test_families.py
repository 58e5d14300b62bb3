"""Model families beyond the MLP: counts from the module, features of any module, real tiny training
of the built-in CNN and ViT and of a user family (plan, run, kill -9 and resume, fit, compare), and
the grid errors a family can cause."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from test_bad_inputs import dump, invoke, refused
from test_runner import needs_fashion, points, start, states, study, wait_for_lines
from tiny_datasets import fashion_subset, write_idx
from torch import nn

from scaling_study import families, models
from scaling_study.plan import JobSpec


def spec(value: object) -> models.ModelSpec:
    return models.parse_model(value, "test")


# ---------------------------------------------------------------- counts


def test_mlp_counted_from_its_module_equals_its_exact_count():
    """FlopCounterMode, halved, on one 64 px example gives the paper's 66.83M for B-12/Wi-768 (1000 classes)."""
    mlp = spec("B-12/Wi-768")
    module = models.build(mlp, 3 * 64 * 64, 1000)
    params, flops = families.module_counts(module, 3, 64)
    assert flops == mlp.flops(3 * 64 * 64, 1000) == 66_828_288
    assert params == mlp.parameters(3 * 64 * 64, 1000)
    assert families.counts(mlp, 3, 64, 1000) == (params, flops)  # the MLP keeps its formula as the source


def test_cnn_counts_by_hand():
    """Stem 3x3 with stride 2 on 1x28x28 -> 8 x 14 x 14, two residual blocks of two 3x3 convs, pooled, a head."""
    cnn = spec({"family": "cnn", "name": "c", "width": 8, "depth": 2, "stride": 2})
    macs = 14 * 14 * 1 * 8 * 9 + 2 * 2 * (14 * 14 * 8 * 8 * 9) + 8 * 10
    params = (9 * 8 + 2 * 8) + 2 * 2 * (8 * 8 * 9 + 2 * 8) + (8 * 10 + 10)
    assert families.counts(cnn, 1, 28, 10) == (params, macs) == (2546, 465_776)


def test_vit_counts_by_hand():
    """Patch 4 on 1x28x28: S = 49 tokens of width 32; per block qkv, the two attention products, the
    projection and the 4x MLP: 12 S w^2 + 2 S^2 w."""
    vit = spec({"family": "vit", "name": "v", "patch": 4, "width": 32, "depth": 2, "heads": 4})
    s, w = 49, 32
    macs = s * 16 * w + 2 * (12 * s * w * w + 2 * s * s * w) + w * 10
    block = 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + 2 * w + (w * 4 * w + 4 * w) + (4 * w * w + w)
    params = (16 * w + w) + s * w + 2 * block + 2 * w + (w * 10 + 10)
    assert families.counts(vit, 1, 28, 10) == (params, macs) == (27_914, 1_536_960)


def test_an_mlp_spec_keeps_its_fields_and_name():
    mlp = spec({"family": "mlp", "kind": "bottleneck", "depth": 12, "width": 1024})
    assert mlp == spec("B-12/Wi-1024") and mlp.name == "B-12/Wi-1024"
    cnn = spec({"family": "cnn", "name": "CNN-8", "width": 8})
    again = JobSpec.from_dict(json.loads(json.dumps({"model": cnn.__dict__, **_job_fields()})))
    assert again.model == cnn and again.model.name == "CNN-8"


def _job_fields() -> dict:
    from dataclasses import asdict

    from scaling_study.grid import EvaluationConfig, PretrainData, TrainConfig

    return {"pretrain": asdict(PretrainData("fashion-mnist")), "resolution": 28, "channels": 1, "classes": 10,
            "examples": 10, "subset_seed": 0, "seed": 0, "epochs": [1], "train": asdict(TrainConfig()),
            "downstream": [], "evaluation": asdict(EvaluationConfig())}


# ---------------------------------------------------------------- features


class WithFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(4, 3), nn.Linear(3, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1)) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_features_are_the_last_linear_layers_input_unless_the_class_defines_features():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 2, 2)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    body = plain[2](plain[1](plain[0](x)))
    features, logits = families.features_and_logits(plain, x)
    assert torch.equal(features, body) and torch.equal(logits, plain(x))
    assert torch.equal(families.features(plain, x), body)
    own = WithFeatures()
    assert torch.equal(families.features(own, x), own.features(x))
    tagged = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    tagged.features = nn.Identity()  # a submodule called `features` is no features() method
    assert torch.equal(families.features(tagged, x), tagged[1](tagged[0](x)))
    families.replace_head(plain, nn.Linear(3, 7))
    assert plain(x).shape == (5, 7) and families.feature_width(plain) == 3


# ---------------------------------------------------------------- real tiny training

USER_FAMILY = '''
from torch import nn


def convnet(input_shape, classes, width=4):
    """A user's family: a plain nn.Sequential, without features() or a `head` attribute."""
    channels, height, side = input_shape
    return nn.Sequential(nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * ((height + 1) // 2) * ((side + 1) // 2), classes))
'''


def family_grid(data: Path, name: str, models_toml: str, examples: str, epochs: str, downstream: bool) -> str:
    evaluation = f"""
[[data.downstream]]
dataset = "fashion-mnist"
path = "{data}"
protocol = "linear"

[[data.downstream]]
dataset = "fashion-mnist"
path = "{data}"
protocol = "finetune"
""" if downstream else ""
    return f"""
[study]
name = "{name}"

[data.pretrain]
dataset = "fashion-mnist"
path = "{data}"
{evaluation}
[grid]
models = [{models_toml}]
examples = {examples}
epochs = {epochs}

[train]
optimizer = "adamw"
lr = 1e-3
batch_size = 50
precision = "fp32"

[evaluation]
probe = "fast"
probe_batch_size = 100
finetune_epochs = 1
"""


THREE = ('{family = "cnn", name = "CNN-4", width = 4, depth = 1, stride = 2}, '
         '{family = "vit", name = "ViT-8", width = 8, depth = 1, patch = 7, heads = 2}, '
         '{family = "my_models.py:convnet", name = "mine-4"}')


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    return fashion_subset(tmp_path_factory.mktemp("fashion-families"), 600, 200)


def log_lines(folder: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in folder.glob("runs/*/job-*/log.txt"))


def planned_three(folder: Path, data: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grid.toml").write_text(family_grid(data, "three", THREE, "[300]", "[1, 2, 3]", downstream=True))
    (folder / "my_models.py").write_text(USER_FAMILY)
    url = f"sqlite:///{folder / 'results.db'}"
    study("plan", "grid.toml", "--db", url, cwd=folder)
    return url


@needs_fashion
def test_each_family_trains_and_resumes_bit_identically_after_kill_9(fashion, tmp_path):
    """CNN, ViT and a user's nn.Sequential: pre-training, upstream error, a linear probe and fine-tuning
    (features and a new head of each); a worker killed with SIGKILL mid-study, resumed, gives every point
    bit for bit as an uninterrupted run (from another folder: the user family travels with the spec)."""
    reference_dir = tmp_path / "reference"
    url = planned_three(reference_dir, fashion)
    started = time.monotonic()
    study("run", "--db", url, cwd=tmp_path)  # not the grid's folder: my_models.py is found through the spec
    work_s = time.monotonic() - started
    assert states(url) == ["done"] * 3
    reference = points(url)
    metrics = {m for _, _, m in reference}
    assert metrics == {"upstream/top1", "upstream/top5", "fashion-mnist/linear", "fashion-mnist/finetune", "train/loss"}
    assert len(reference) == 3 * 3 * 5

    killed_dir = tmp_path / "killed"
    url = planned_three(killed_dir, fashion)
    rng = random.Random(0)
    kills = 0
    for last_line in (rng.randint(1, 8), rng.randint(1, 3)):  # 3 jobs x (claim, 3 epochs, end) = 15 lines
        before = log_lines(killed_dir)
        worker = start("run", "--resume", "--db", url, "--checkpoint-every", 1, cwd=killed_dir)
        seen = wait_for_lines(worker, killed_dir, before + last_line)
        time.sleep(max(0.0, seen + rng.uniform(0.0, 0.5) * work_s / 9 - time.monotonic()))
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            kills += 1
        worker.communicate(timeout=120)
    study("run", "--resume", "--db", url, cwd=killed_dir)
    assert states(url) == ["done"] * 3
    assert points(url) == reference
    assert kills >= 1, "the worker finished before its kill: the test killed nothing"


@needs_fashion
def test_families_fit_compare_export_and_predict(fashion, tmp_path):
    """Two sizes each of the CNN and the ViT: `study fit --kind`, `--compare-kinds` (one Fig. 1, a
    side-by-side table with a verdict), export and import, two studies compared, predict and bench."""
    sizes = ('{family = "cnn", name = "CNN-2", width = 2, stride = 2}, {family = "cnn", name = "CNN-6", width = 6, '
             'stride = 2}, {family = "vit", name = "ViT-4", width = 4, patch = 7, heads = 1}, '
             '{family = "vit", name = "ViT-12", width = 12, patch = 7, heads = 2}')
    (tmp_path / "grid.toml").write_text(family_grid(fashion, "pair", sizes, "[100, 200, 400, 600]", "[1, 2, 4, 8]", downstream=False))
    db = ("--db", f"sqlite:///{tmp_path / 'results.db'}")
    plan = study("plan", "grid.toml", *db, cwd=tmp_path).stdout
    for name, (params, flops) in {"CNN-2": (212, 31_772), "ViT-12": (4_714, 77_112)}.items():
        line = next(line for line in plan.splitlines() if f" {name} " in line)
        assert f" {params:,} " in line and f" {flops / 1e6:.2f}M " in line, line  # both counts for every size
    study("run", *db, cwd=tmp_path)
    one = study("fit", *db, "--kind", "vit", "--bootstrap", "20", "--out", "vit", "--no-page", cwd=tmp_path)
    assert json.loads((tmp_path / "vit" / "fit.json").read_text())["filters"]["kind"] == "vit", one.stdout
    compared = study("fit", *db, "--compare-kinds", "--bootstrap", "50", "--out", "kinds", cwd=tmp_path)
    report = json.loads((tmp_path / "kinds" / "fit.json").read_text())["comparison"]
    assert report["groups"] == ["cnn", "vit"] and (tmp_path / "kinds" / "fig1_compare.png").stat().st_size > 0
    alpha = next(row for row in report["rows"] if row["quantity"] == "E(C) alpha")
    assert set(alpha["groups"]) == {"cnn", "vit"} and alpha["verdicts"]["cnn - vit"]["differ"] in (True, False), compared.stdout
    assert "| cnn - vit |" in (tmp_path / "kinds" / "report.md").read_text()

    study("export", *db, "--metric", "upstream/top1", "--out", "points.csv", cwd=tmp_path)
    study("import", "points.csv", "--study", "copy", *db, cwd=tmp_path)
    study("fit", *db, "--study", "pair", "--study", "copy", "--bootstrap", "30", "--out", "studies", cwd=tmp_path)
    rows = json.loads((tmp_path / "studies" / "fit.json").read_text())["comparison"]["rows"]
    assert rows and all(row["verdicts"]["pair - copy"]["differ"] is False for row in rows)  # the same points: no difference

    predicted = study("predict", *db, "--study", "pair", "--kind", "cnn", "--model", "CNN-6", "--examples", "600",
                      "--epochs", "8", "--bootstrap", "20", "--json", cwd=tmp_path)
    assert json.loads(predicted.stdout)["run"]["model"] == "CNN-6"
    bench = study("bench", "grid.toml", "--models", "ViT-4", "--steps", "2", "--no-evaluation", *db, cwd=tmp_path)
    assert "ViT-4" in bench.stdout


# ---------------------------------------------------------------- bad input


BAD_FAMILY = '''
from torch import nn


def raises(input_shape, classes):
    raise RuntimeError("boom")


def number(input_shape, classes):
    return 3


def flat(input_shape, classes, inputs=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, classes))


def seven(input_shape, classes):
    channels, height, side = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * side, 7))
'''


@pytest.mark.parametrize("entry, needles", [
    ('{family = "nowhere_at_all:net"}', ("cannot import 'nowhere_at_all'",)),
    ('{family = "bad.py:missing"}', ("no callable 'missing'",)),
    ('{family = "bad.py:raises"}', ("RuntimeError: boom",)),
    ('{family = "bad.py:number"}', ("returned int, not a torch.nn.Module",)),
    ('{family = "bad.py:flat"}', ("does not take a 1x28x28 input",)),
    ('{family = "vit", patch = 3}', ("patch 3 does not divide the 28x28 input",)),
    ('{family = "bad.py:seven"}', ("shape (2, 7)", "expected (2, 10)")),
])
def test_a_bad_family_is_one_line_naming_grid_and_key_and_plans_nothing(tmp_path, entry, needles):
    write_idx(tmp_path / "data", n_train=40, n_test=10)
    (tmp_path / "bad.py").write_text(BAD_FAMILY)
    (tmp_path / "grid.toml").write_text(family_grid(tmp_path / "data", "bad", entry, "[20]", "[1]", downstream=False))
    result = invoke("plan", "grid.toml", "--db", "sqlite:///results.db", cwd=tmp_path)
    refused(result, 2, "grid.toml", "[grid].models[0]", *needles)
    assert dump(tmp_path / "results.db") is None  # nothing planned, no database made
