"""reports/index.html: written by `study fit` and `study report`, kept current by `--watch`, opened in a
real headless Chromium (screenshot, figures non-blank, no console errors, no network)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from scaling_study import db, page, synthetic
from scaling_study.cli import app

IMPORT_COLUMNS = ["model", "params", "flops_per_example", "examples", "epochs", "error", "metric", "seed"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1400, 4200)
JOBS = 36  # 6 models x 6 subset sizes, 5 epoch counts each: a fit of every law in seconds


def study(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def import_points(frame: pd.DataFrame, path: Path, url: str) -> None:
    frame[IMPORT_COLUMNS].to_csv(path, index=False)
    study("import", path, "--db", url, "--study", "grid")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[str, Path]:
    """A study of 36 imported trajectories, fitted by `study fit`: its database URL and reports folder."""
    folder = tmp_path_factory.mktemp("page")
    url = f"sqlite:///{folder / 'results.db'}"
    import_points(synthetic.parametric_study(seed=0, models=6, examples=6), folder / "grid.csv", url)
    out = folder / "reports"
    output = study("fit", "--db", url, "--bootstrap", 10, "--out", out, "--runs-dir", folder / "runs")
    assert str(out / "index.html") in " ".join(output.split())
    return url, out


def test_fit_writes_one_self_contained_page(fitted):
    url, out = fitted
    text = (out / "index.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not re.search(r"https?:|//[a-z]", text, re.I), "the page names a URL"
    # only references within the page: #ids, and images carried in it (a colour bar's data: URI)
    assert not re.search(r"\b(src|href)\s*=\s*\"(?!#|data:image/)", text), "the page refers to another file"
    assert text.count("<svg") >= 4 + JOBS  # the four figures and a loss curve per job
    for heading in ("State", "Fits: synthetic/linear", "Laws", "Compute-optimal allocation", "Figures", f"Loss curves ({JOBS} jobs)"):
        assert heading in text, heading
    fit = json.loads((out / "fit.json").read_text())
    alpha = fit["laws"]["compute"]["params"]["alpha"]
    assert f"alpha = {alpha['value']:.4g} [{alpha['low']:.4g}, {alpha['high']:.4g}]" in text
    for estimator in ("envelope", "isoflop", "parametric"):
        assert f"<td>{estimator}</td>" in text
    assert f"done {JOBS}" in text and "nothing left to run" in text


def test_page_shows_any_state_and_the_runs_stopped_early(fitted):
    """A state the page has never heard of (an adaptive study's `pruned`, say) is counted, coloured and listed."""
    url, out = fitted
    engine = db.connect(url)
    state = page.study_state(engine, "grid")
    state["jobs"][3].update(state="pruned", error="above the envelope at T = 10")
    state["jobs"][4].update(state="someday", error="a state from the future")
    state["counts"] = {"done": JOBS - 2, "pruned": 1, "someday": 1}
    text = page.render(state, page.load_fit(out, "grid"), [], {})
    assert "Runs stopped early (1 pruned)" in text and "above the envelope at T = 10" in text
    assert "a state from the future" in text and "someday 1" in text


def test_report_refits_only_when_points_landed_and_shows_job_curves(fitted, tmp_path):
    url, out = fitted
    mine = tmp_path / "reports"
    shutil.copytree(out, mine)
    before = (mine / "fit.json").read_text()
    study("report", "--db", url, "--out", mine, "--no-fit")
    assert (mine / "fit.json").read_text() == before
    study("report", "--db", url, "--out", mine)  # no point newer than the fit: not refitted
    assert (mine / "fit.json").read_text() == before
    engine = db.connect(url)
    job = db.job_rows(engine, "grid")[0]
    folder = page.job_dir(tmp_path / "runs", job)
    folder.mkdir(parents=True)
    (folder / "curve.csv").write_text("step,loss,lr,images_per_s\n" + "".join(
        f"{s},{2.5 / s ** 0.3:.4f},0.001,900\n" for s in range(1, 501)))
    study("report", "--db", url, "--out", mine, "--runs-dir", tmp_path / "runs")
    text = (mine / "index.html").read_text()
    card = text[text.index(f'id="job-{job["id"]}"'):]
    card = card[:card.index("</div>")]
    assert "train loss vs step" in card and "\u2192 0.388 (min 0.388)" in card
    assert len(re.search(r'points="([^"]*)"', card).group(1).split()) == page.CURVE_POINTS  # 500 steps, 120 means


def test_report_watch_rewrites_the_page_when_a_result_lands(fitted, tmp_path):
    url, out = fitted
    mine = tmp_path / "reports"
    shutil.copytree(out, mine)
    index = mine / "index.html"
    index.unlink()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    watcher = subprocess.Popen(
        [sys.executable, "-m", "scaling_study", "report", "--db", url, "--out", mine, "--no-fit", "--watch",
         "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while not index.exists() and watcher.poll() is None:
            time.sleep(0.05)
        first = index.read_text()
        assert f"{JOBS} jobs" in first and 'http-equiv="refresh"' in first
        late = pd.DataFrame([dict(model="B-9/Wi-9999", params=7e7, flops_per_example=7e7, examples=4096, epochs=e,
                                  error=0.5 / e, metric="synthetic/linear", seed=0) for e in (1, 2)])
        import_points(late, tmp_path / "late.csv", url)
        while "B-9/Wi-9999" not in index.read_text() and watcher.poll() is None:
            time.sleep(0.05)
        assert f"{JOBS + 1} jobs" in index.read_text()
        assert not list(mine.glob(".index.html.*"))  # written atomically: no temporary file left behind
    finally:
        watcher.send_signal(signal.SIGINT)
        out_text, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "stopped watching" in out_text and "Traceback" not in err


# ---- In a real browser ----

@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing: scripts/setup.sh installs Debian's chromium")
        pytest.skip("chromium missing: apt-get install chromium")
    return CHROMIUM


def browse(binary: str, page_path: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a file, as root too (no sandbox), with its own profile and console on stderr."""
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=3000", *flags, page_path.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def console_errors(result: subprocess.CompletedProcess) -> list[str]:
    """What the page itself said went wrong: its data-errors attribute, and console lines on stderr."""
    found = re.findall(r'data-errors="([^"]*)"', result.stdout)
    return found + [line for line in result.stderr.splitlines() if "CONSOLE" in line]


def figure_boxes(dom: str) -> dict[str, tuple[int, int, int, int]]:
    """Each figure's box in CSS pixels, as the page's own script measured it after layout."""
    raw = re.search(r'data-figures="([^"]*)"', dom)
    assert raw, "the page's script did not run"
    return {name: tuple(box) for name, box in json.loads(raw.group(1).replace("&quot;", '"')).items()}


def non_blank(image, box: tuple[int, int, int, int]) -> float:
    """Share of the box's pixels that are not (almost) white."""
    x, y, w, h = box
    region = image[y:y + h, x:x + w, :3]
    assert region.size, f"box {box} lies outside the screenshot"
    return float((region.min(axis=2) < 0.9).mean())


def test_the_page_renders_in_chromium_with_figures_and_no_console_errors(fitted, chromium, tmp_path):
    from matplotlib import image

    _, out = fitted
    index = out / "index.html"
    dom = browse(chromium, index, tmp_path / "profile", "--dump-dom")
    assert 'data-ready="1"' in dom.stdout, dom.stderr[-2000:]
    assert console_errors(dom) == []
    boxes = figure_boxes(dom.stdout)
    assert set(boxes) >= {"fig1_error_vs_compute", "fig6_bottlenecks", "fig7_allocation", "residuals_compute"}
    shot = tmp_path / "index.png"
    browse(chromium, index, tmp_path / "profile", f"--screenshot={shot}")
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    for name, box in boxes.items():
        if box[1] + box[3] <= WINDOW[1]:  # those within the window
            assert non_blank(pixels, box) > 0.02, f"{name} at {box} is blank"
    # The check can fail: the same page with one broken script and one missing image is caught.
    broken = tmp_path / "broken.html"
    broken.write_text(index.read_text().replace("</main>", '<img src="missing.png"><script>noSuchFunction()</script></main>'))
    errors = console_errors(browse(chromium, broken, tmp_path / "profile", "--dump-dom"))
    assert any("noSuchFunction" in e for e in errors) and any("missing.png" in e for e in errors), errors


def test_the_page_needs_no_network(fitted, chromium, tmp_path):
    """With every request sent to a closed port, the page still renders whole."""
    from matplotlib import image

    _, out = fitted
    index = out / "index.html"
    offline = ("--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")
    dom = browse(chromium, index, tmp_path / "profile", "--dump-dom", *offline)
    assert 'data-ready="1"' in dom.stdout and console_errors(dom) == []
    shot = tmp_path / "offline.png"
    browse(chromium, index, tmp_path / "profile", f"--screenshot={shot}", *offline)
    box = figure_boxes(dom.stdout)["fig1_error_vs_compute"]
    assert non_blank(image.imread(shot), box) > 0.02
