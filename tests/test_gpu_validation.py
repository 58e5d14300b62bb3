"""benchmarks/gpu/validate.py's CPU dry run: the GPU validation's code paths, at tiny sizes, as a GPU machine runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "validate.py"


def test_the_gpu_validation_runs_every_part_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    result = json.loads((tmp_path / "out" / "validate.json").read_text())
    assert done.returncode == 0, (result.get("errors"), done.stdout[-3000:], done.stderr[-3000:])
    assert result["status"] == {part: "ok" for part in ("peak", "step", "profile", "streamed", "study", "resume")}
    assert result["peak"]["gemm_peak_flops_per_s"] > 0
    for label in ("default", "eager"):
        step = result["step"][label]
        assert step["images_per_s"] > 0 and step["resident"] and 0 < step["fraction_of_measured_peak"]
    assert result["step"]["default"]["compile"] is False  # the CPU's default; CUDA's is to compile
    assert result["profile"]["top"] and result["profile"]["total_us"] > 0
    streamed = result["streamed"]
    assert streamed["images_per_s"] > 0 and streamed["first_epoch_images_per_s"] > 0
    assert streamed["over_step_images_per_s"] > 0 and streamed["first_epoch_over_step"] > 0
    assert streamed["batches_per_epoch"] == 512 // 32
    study = result["study"]
    assert {job["state"] for job in study["jobs"]} == {"done"} and study["points"] > 0
    assert "fit.json" in study["fit_files"]
    resume = result["resume"]
    assert resume["was_killed"] and resume["identical"]  # on the CPU, a resumed run is bit-identical
    assert {job["state"] for job in resume["killed"]["jobs"]} == {"done"}
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "streamed loader, epoch after the first" in summary and "streamed loader, first epoch" in summary
    assert "resume after kill -9" in summary
