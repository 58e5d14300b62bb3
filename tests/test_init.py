"""`study init`: a starter grid for a prepared store, sized to its data, that `study plan` accepts as written."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from scaling_study.starter import choose
from tiny_datasets import write_idx


def meta(train: int, classes: int, channels: int, resolution: int, resize: str = "squash") -> dict:
    """The fields of a store's meta.json that a starter grid is sized from."""
    return {"dataset": "mine", "splits": {"train": {"count": train}}, "classes": [str(k) for k in range(classes)],
            "channels": channels, "resolution": resolution, "resize": resize}


@pytest.fixture
def store(tmp_path: Path, cli) -> Path:
    """A real prepared store: 400 training images of 8x8, 10 classes, through `study data prepare`."""
    write_idx(tmp_path / "raw", n_train=400, n_test=50, side=8, signal=True)
    out = tmp_path / "mine"
    result = cli("data", "prepare", tmp_path / "raw", "--format", "idx", "--dataset", "mine", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_the_written_grid_plans_as_it_says(store, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("init", "mine")
    assert result.exit_code == 0, result.output
    grid = tmp_path / "mine.toml"
    text = grid.read_text()
    assert text.startswith("# A starter study of mine (400 training images)")
    assert "study plan mine.toml && study run --resume --study mine" in text
    raw = tomllib.loads(text)
    expected = choose(json.loads((store / "meta.json").read_text()), "mine")
    assert raw["grid"]["models"] == list(expected.models) and len(expected.models) >= 2
    assert raw["grid"]["examples"] == list(expected.examples) and max(expected.examples) == 400
    assert raw["train"]["batch_size"] == expected.batch_size <= min(expected.examples)

    plan = cli("plan", grid, "--dry-run")
    assert plan.exit_code == 0, plan.output
    jobs = len(expected.models) * len(expected.examples)
    points = jobs * len(expected.epochs)
    assert f"Plans {jobs} trajectories with {points} evaluation points" in text
    assert f"{jobs} trajectories, {points} evaluation points" in " ".join(plan.output.split())
    assert not (tmp_path / "results.db").exists()


def test_fashion_mnist_gets_the_demo_and_imagenet_the_paper_models():
    demo = choose(meta(60_000, 10, 1, 28), "data/fashion-mnist")
    assert demo.models == ("B-1/Wi-32", "B-2/Wi-64", "B-2/Wi-128", "B-3/Wi-256")
    assert demo.examples == (1875, 3750, 7500, 15000, 30000, 60000)
    assert (demo.epochs, demo.batch_size, demo.resolution) == ((2, 4, 8, 16), 256, 28)

    paper = choose(meta(11_801_680, 11_230, 3, 64), "data/imagenet21k-64")
    assert paper.models[-1] == "B-12/Wi-1024" and paper.batch_size == 4096
    small = choose(meta(5_000, 10, 3, 224), "data/small")
    assert small.resolution == 64 and small.epochs == (16, 32, 64, 128)  # 5,000 x 128 >= 500,000 images seen
    assert choose(meta(5_000, 10, 3, 96, "keep-aspect"), "data/aspect").resolution == 96  # read at its own side only


def test_bad_input_is_one_line_and_writes_nothing(store, tmp_path, cli):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / ".prepare-progress.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    taken = tmp_path / "taken.toml"
    taken.write_text("mine\n")
    cases = [
        ((tmp_path / "absent", "--out", tmp_path / "a.toml"), "no such folder"),
        ((empty, "--out", tmp_path / "b.toml"), "no meta.json, so not a prepared store"),
        ((incomplete, "--out", tmp_path / "c.toml"), "an unfinished `study data prepare`"),
        ((store, "--out", taken), "already exists"),
        ((store, "--out", tmp_path / "d.toml", "--name", "a/b"), "must not contain /"),
    ]
    for args, needle in cases:
        result = cli("init", *args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert taken.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.glob("*.toml")) == ["taken.toml"]
