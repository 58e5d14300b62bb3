"""How far the fast linear probe (L-BFGS) is from the paper's (LION, lr 1e-5, 50 epochs), and
the paper's from the reference code's (SGD on augmented images).

    python benchmarks/probe_agreement.py          # fast vs paper, tiny B-MLPs (about a minute)
    python benchmarks/probe_agreement.py --demo   # fast, paper and reference on the demo's setting (~10 min)

Default: trains a few tiny B-MLPs on Fashion-MNIST subsets with train(), then probes each one's
frozen features of Fashion-MNIST (60k train / 10k test) with both protocols on the same cached
features, and prints both errors, their difference and whether the two orders of the models agree.

--demo: trains demo models exactly as grids/demo.toml does (its recipe, all 60,000 images, 16
epochs), once each, then scores each through evaluate() as a demo job would, with probe =
"fast" (the demo's), "paper" and "reference"; writes probe_agreement_demo.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from results_file import write  # noqa: E402

from scaling_study import data, loader  # noqa: E402
from scaling_study.evaluate import evaluate, extract_features, probe_fast, probe_paper, topk_errors  # noqa: E402
from scaling_study.grid import load_grid, parse_grid  # noqa: E402
from scaling_study.plan import expand  # noqa: E402
from scaling_study.train import init_model, train  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
RUNS = [("B-1/Wi-32", 1000, 2), ("B-2/Wi-64", 3000, 3), ("B-2/Wi-128", 10000, 4), ("B-4/Wi-256", 20000, 4)]


def grid(model: str, examples: int, epochs: int) -> str:
    return f"""
[study]
name = "probe-agreement"
[data.pretrain]
dataset = "fashion-mnist"
path = "{FASHION}"
[grid]
models = ["{model}"]
examples = [{examples}]
epochs = [{epochs}]
[train]
lr = 1e-3
batch_size = 256
precision = "fp32"
[evaluation]
upstream = false
"""


DEMO = Path(__file__).resolve().parent.parent / "grids" / "demo.toml"
DEMO_MODELS = ("B-1/Wi-32", "B-2/Wi-128")
PROBES = ("fast", "paper", "reference")


def demo() -> None:
    """The demo's own jobs at N = 60,000 trained once to T = 16, then probed three ways."""
    device = torch.device("cpu")
    jobs = [job for job in expand(load_grid(DEMO)) if job.examples == 60_000 and job.model.name in DEMO_MODELS]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for job in jobs:
            # Train without the demo's evaluations along the way (they do not change the weights).
            quiet = dataclasses.replace(job, epochs=(job.total_epochs,), downstream=(),
                                        evaluation=dataclasses.replace(job.evaluation, upstream=False))
            checkpoint = Path(folder) / "ck.pt"
            checkpoint.unlink(missing_ok=True)
            start = time.perf_counter()
            train(quiet, checkpoint=checkpoint)
            row = {"model": job.model.name, "examples": job.examples, "epochs": job.total_epochs,
                   "train_s": time.perf_counter() - start}
            model = init_model(job)
            model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
            for probe in PROBES:
                scored = dataclasses.replace(job, evaluation=dataclasses.replace(job.evaluation, upstream=False,
                                                                                 probe=probe))
                start = time.perf_counter()
                (error,) = evaluate(model, scored, device, job.total_epochs).values()
                row[probe], row[f"{probe}_s"] = error, time.perf_counter() - start
            rows.append(row)
            print(f"{job.model.name:11s} N={job.examples:,} T={job.total_epochs}: "
                  + ", ".join(f"{p} {row[p]:.4f} ({row[p + '_s']:.0f} s)" for p in PROBES)
                  + f"; reference - paper = {row['reference'] - row['paper']:+.4f}", flush=True)
    settings = {"probe_epochs": jobs[0].evaluation.probe_epochs, "probe_batch_size": jobs[0].evaluation.probe_batch_size,
                "paper": "LION lr 1e-5, head from zero, cached features, label smoothing of the recipe (0.1)",
                "reference": "SGD momentum 0.9 lr 0.01, clip 1, smoothing 0.3, crops 0.4-1 ratio 1 + flips, "
                             "last partial batch dropped"}
    print(f"wrote {write('probe_agreement_demo', {'grid': 'grids/demo.toml', 'settings': settings, 'runs': rows})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="fast, paper and reference probes on the demo's setting")
    if parser.parse_args().demo:
        demo()
        return
    device = torch.device("cpu")
    train_split = data.load_split("fashion-mnist", FASHION, "train", 28)
    test_split = data.load_split("fashion-mnist", FASHION, "test", 28)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for model_name, examples, epochs in RUNS:
            (spec,) = expand(parse_grid(grid(model_name, examples, epochs)))
            checkpoint = Path(folder) / "ck.pt"
            checkpoint.unlink(missing_ok=True)
            train(spec, checkpoint=checkpoint)
            model = init_model(spec)
            model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
            model.eval()
            feats, labels = extract_features(model, loader.eval_batches(train_split, 4096, device, 28), "fp32", device)
            test_feats, test_labels = extract_features(
                model, loader.eval_batches(test_split, 4096, device, 28), "fp32", device)
            start = time.perf_counter()
            fast = topk_errors(probe_fast(feats, labels, 10)(test_feats), test_labels, (1,))[0]
            fast_s = time.perf_counter() - start
            start = time.perf_counter()
            head = probe_paper(feats, labels, 10, epochs=50, lr=1e-5, batch_size=4096, label_smoothing=0.3, seed=0)
            paper = topk_errors(head(test_feats), test_labels, (1,))[0]
            paper_s = time.perf_counter() - start
            rows.append({"model": model_name, "examples": examples, "epochs": epochs, "fast": fast, "paper": paper,
                         "fast_s": fast_s, "paper_s": paper_s})
            print(f"{model_name:11s} N={examples:>6,} T={epochs}: fast {fast:.4f} ({fast_s:.1f} s), "
                  f"paper {paper:.4f} ({paper_s:.1f} s), paper - fast = {paper - fast:+.4f}")
    same_order = sorted(rows, key=lambda r: r["fast"]) == sorted(rows, key=lambda r: r["paper"])
    gaps = [r["paper"] - r["fast"] for r in rows]
    print(f"paper - fast: {min(gaps):+.4f} .. {max(gaps):+.4f}; the two protocols order the models "
          f"{'the same way' if same_order else 'differently'}")
    print(f"wrote {write('probe_agreement', {'runs': rows, 'same_order': same_order})}")


if __name__ == "__main__":
    main()
