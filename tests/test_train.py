"""Training one trajectory on real tiny data: it learns, resumes bit for bit, diverges cleanly.

Every spec comes from a grid's TOML text through parse_grid + expand, as the runner gets it.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import lion_pytorch
import pytest
import torch

from scaling_study import budget
from scaling_study.errors import StudyError
from scaling_study.grid import parse_grid
from scaling_study.loader import Batch
from scaling_study.evaluate import mixed_loss
from scaling_study.models import build, parse_model
from scaling_study.optim import Lion, make_optimizer
from scaling_study.plan import JobSpec, expand
from scaling_study.train import Stepper, init_model, lr_at, train

FASHION = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not Path(FASHION).exists(), reason="apt-get install dataset-fashion-mnist")


def grid_spec(models='"B-2/Wi-64"', examples=3000, epochs="[3]", batch=256, lr="1e-3", train="", evaluation="",
              downstream=True) -> JobSpec:
    """The one job of a Fashion-MNIST grid."""
    text = f"""
[study]
name = "train-test"

[data.pretrain]
dataset = "fashion-mnist"
path = "{FASHION}"
""" + (f"""
[[data.downstream]]
dataset = "fashion-mnist"
path = "{FASHION}"
protocol = "linear"
""" if downstream else "") + f"""
[grid]
models = [{models}]
examples = [{examples}]
epochs = {epochs}

[train]
lr = {lr}
batch_size = {batch}
precision = "fp32"
{train}

[evaluation]
{evaluation}
"""
    (spec,) = expand(parse_grid(text, "test.toml"))
    return spec


def final_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["model"]


# ---------------------------------------------------------------- learning


@needs_fashion
def test_tiny_b_mlp_learns_fashion_mnist(tmp_path):
    spec = grid_spec(evaluation='probe = "fast"')
    losses = []
    result = train(spec, checkpoint=tmp_path / "ck.pt", on_progress=lambda p: losses.append(p.loss))
    assert result.status == "done" and result.epochs_done == 3
    per_epoch = budget.steps_per_epoch(3000, 256)
    assert len(losses) == 3 * per_epoch
    first, last = losses[:per_epoch], losses[-per_epoch:]
    # Measured: the mean step loss goes 2.15 -> 1.93 (label smoothing 0.3 and MixUp keep it high).
    assert sum(last) / per_epoch < sum(first) / per_epoch - 0.1
    points = {p.metric: p.value for p in result.evaluations}
    assert set(points) == {"upstream/top1", "upstream/top5", "fashion-mnist/linear", "train/loss"}
    assert all(p.epoch == 3 for p in result.evaluations)
    # Measured: upstream top-1 error 0.31, linear-probe error 0.184 (chance: 0.9).
    assert points["upstream/top1"] < 0.45
    assert points["fashion-mnist/linear"] < 0.25


# ---------------------------------------------------------------- exact resume


RESUME = dict(models='"B-1/Wi-32"', examples=1000, epochs="[1, 2]", batch=128,
              evaluation='probe = "paper"\nprobe_epochs = 2\nprobe_lr = 1e-3')


def stop_after(steps: int):
    """A should_stop that says yes once `steps` optimizer steps have been taken (counted by progress)."""
    seen = []
    return (lambda p: seen.append(p.step)), (lambda: bool(seen) and seen[-1] >= steps)


@needs_fashion
def test_resume_mid_epoch_and_end_of_epoch_is_bit_identical(tmp_path):
    spec = grid_spec(**RESUME)
    per_epoch = budget.steps_per_epoch(1000, 128)  # 8

    # Uninterrupted, keeping a copy of the checkpoint written at the end of epoch 1.
    whole = tmp_path / "whole.pt"
    snapshot = tmp_path / "end-of-epoch-1.pt"
    calls = []

    def on_epoch(epoch, points):
        calls.append((epoch, [p.metric for p in points]))
        if epoch == 1:
            shutil.copy(whole, snapshot)

    reference = train(spec, checkpoint=whole, on_epoch=on_epoch)
    assert reference.status == "done"
    assert calls == [(1, ["upstream/top1", "upstream/top5", "fashion-mnist/linear", "train/loss"])] + [
        (2, ["upstream/top1", "upstream/top5", "fashion-mnist/linear", "train/loss"])]
    expected = final_weights(whole)

    # Interrupted mid-epoch (step 5), at the last batch of epoch 1 before its evaluation (step 8),
    # mid-epoch 2 (step 11), then resumed to the end.
    pieces = tmp_path / "pieces.pt"
    for stop in (5, per_epoch, 11):
        progress, should_stop = stop_after(stop)
        part = train(spec, checkpoint=pieces, on_progress=progress, should_stop=should_stop)
        assert part.status == "interrupted" and part.step == stop
    assert part.epochs_done == 1 and [p.epoch for p in part.evaluations] == [1] * 4
    resumed = train(spec, checkpoint=pieces)

    # Resumed from the end-of-epoch checkpoint.
    from_snapshot = train(spec, checkpoint=snapshot)

    for run, path in ((resumed, pieces), (from_snapshot, snapshot)):
        assert run.status == "done" and run.step == 2 * per_epoch
        assert run.evaluations == reference.evaluations  # EvalPoint equality: values compared with ==
        weights = final_weights(path)
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in expected)
        assert run.loss == reference.loss


@needs_fashion
def test_a_resume_keeps_the_thread_count_the_job_started_with(tmp_path):
    """Workers on one host share its cores, so a job may be resumed while more (or fewer) workers run:
    it keeps the torch thread count of its checkpoint, since another count sums in another order."""
    spec = grid_spec(**RESUME)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = train(spec, checkpoint=tmp_path / "whole.pt")
        progress, should_stop = stop_after(5)
        part = train(spec, checkpoint=tmp_path / "pieces.pt", on_progress=progress, should_stop=should_stop)
        assert part.status == "interrupted"
        torch.set_num_threads(2)  # what the worker that resumes it was given
        resumed = train(spec, checkpoint=tmp_path / "pieces.pt")
        assert torch.get_num_threads() == 1
        assert resumed.evaluations == reference.evaluations and resumed.loss == reference.loss
        weights, expected = final_weights(tmp_path / "pieces.pt"), final_weights(tmp_path / "whole.pt")
        assert all(torch.equal(weights[k], expected[k]) for k in expected)
    finally:
        torch.set_num_threads(before)


@needs_fashion
def test_an_epoch_between_evaluations_is_not_checkpointed_and_a_resume_from_before_it_is_bit_identical(tmp_path):
    """T = [1, 3]: epoch 2 ends seconds after epoch 1's checkpoint, so it writes none; a run killed
    after it resumes from the end of epoch 1 and redoes epoch 2 bit for bit. The epochs' times by
    part go to the clock, with evaluation and checkpoint time only where there was either."""
    from scaling_study.timing import EpochClock

    spec = grid_spec(**{**RESUME, "epochs": "[1, 3]"})
    whole, killed = tmp_path / "whole.pt", tmp_path / "killed.pt"
    laps = []

    def on_epoch(epoch, points):
        if epoch == 2:  # what a kill -9 now would leave on disk
            shutil.copy(whole, killed)

    reference = train(spec, checkpoint=whole, on_epoch=on_epoch,
                      clock=EpochClock(on_lap=lambda epoch, times: laps.append(times)))
    assert torch.load(killed, weights_only=True)["epoch"] == 1
    assert [times["checkpoint"] > 0 for times in laps] == [True, False, True]
    assert [times["eval"] > 0 for times in laps] == [True, False, True]
    resumed = train(spec, checkpoint=killed)
    assert resumed.status == "done" and resumed.evaluations == reference.evaluations and resumed.loss == reference.loss
    expected = final_weights(whole)
    assert all(torch.equal(final_weights(killed)[k], expected[k]) for k in expected)


@needs_fashion
def test_resume_with_a_different_spec_is_refused(tmp_path):
    spec = grid_spec(**RESUME)
    checkpoint = tmp_path / "ck.pt"
    assert train(spec, checkpoint=checkpoint, should_stop=lambda: True).status == "interrupted"
    other = grid_spec(**RESUME, lr="2e-3")
    with pytest.raises(StudyError) as error:
        train(other, checkpoint=checkpoint)
    message = str(error.value)
    assert "\n" not in message and "different job" in message and "train.lr" in message
    # A machine-local path is not part of the job: the same spec elsewhere resumes.
    moved = JobSpec.from_dict({**spec.to_dict(), "pretrain": {**spec.to_dict()["pretrain"], "path": FASHION + "/"}})
    assert train(moved, checkpoint=checkpoint, should_stop=lambda: True).status == "interrupted"


@needs_fashion
def test_absurd_learning_rate_diverges_with_its_step(tmp_path):
    spec = grid_spec(examples=1000, epochs="[1, 2]", lr="1e6", train='optimizer = "sgd"', downstream=False,
                     evaluation="upstream = false")
    result = train(spec, checkpoint=tmp_path / "ck.pt")
    assert result.status == "diverged"
    assert f"at step {result.step} (epoch 1)" in result.message
    assert result.message.startswith("loss ")
    assert not math.isfinite(result.loss) or result.loss > 100
    assert result.evaluations == []
    # Losses read back 4 steps at a time (as on a GPU): the same step, loss and message, although
    # the steps after it up to the read were taken. Measured: step 2, so inside the first window.
    assert 1 < result.step < 4
    late = train(spec, checkpoint=tmp_path / "late.pt", loss_reads_every=4)
    assert (late.status, late.step, late.message, late.evaluations) == ("diverged", result.step, result.message, [])
    assert not (tmp_path / "late.pt").exists()  # nothing after the divergence was saved


@needs_fashion
def test_reading_losses_every_few_steps_changes_no_result(tmp_path):
    """loss_reads_every only moves the host syncs: the same weights, points and loss, also when a
    stop comes between two reads (step 5 with reads every 3), whose unread losses the
    checkpoint must not drop."""
    spec = grid_spec(**RESUME)
    reference = train(spec, checkpoint=tmp_path / "every.pt")
    progress, should_stop = stop_after(5)
    assert train(spec, checkpoint=tmp_path / "three.pt", on_progress=progress, should_stop=should_stop,
                 loss_reads_every=3).status == "interrupted"
    resumed = train(spec, checkpoint=tmp_path / "three.pt", loss_reads_every=3)
    assert resumed.status == "done" and resumed.evaluations == reference.evaluations
    assert resumed.loss == reference.loss
    expected, weights = final_weights(tmp_path / "every.pt"), final_weights(tmp_path / "three.pt")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


# ---------------------------------------------------------------- the step's parts


TABLE_3 = ["B-6/Wi-256", "B-12/Wi-256", "B-6/Wi-512", "B-12/Wi-512", "B-6/Wi-1024", "B-12/Wi-1024"]


def build_model(spec):
    return build(spec, 64 * 64 * 3, 11_230)


def build_model_small():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build(parse_model("B-2/Wi-16", "test"), 64, 7)


def random_batch(size: int, channels: int, side: int, classes: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        x=torch.randn(size, channels, side, side, generator=g),
        y=torch.randint(0, classes, (size,), generator=g),
        y_mix=torch.randint(0, classes, (size,), generator=g),
        lam=torch.rand(size, generator=g),
    )


def stepper_for(model, micro_batch_size: int = 0, label_smoothing: float = 0.3, *, forward=None, optimizer=None,
                grad_clip: float = 0.0) -> Stepper:
    """A CPU fp32 Stepper of `model` (LION at lr 1e-5 unless `optimizer`; `forward` defaults to the model)."""
    optimizer = optimizer or Lion(model.parameters(), lr=1e-5, weight_decay=1e-3)
    return Stepper(model, forward or model, optimizer, label_smoothing=label_smoothing, grad_clip=grad_clip,
                   precision="fp32", device=torch.device("cpu"), micro_batch_size=micro_batch_size, notes=[])


@pytest.mark.parametrize("name", TABLE_3)
def test_table_3_models_take_a_training_step_at_64px(name):
    spec = parse_model(name, "test")
    model = build_model(spec)
    before = model.head.weight.detach().clone()
    stepper = stepper_for(model)
    loss = stepper.backward(random_batch(2, 3, 64, 11_230)).item()
    stepper.step(1e-5)
    assert math.isfinite(loss) and loss > 0
    assert not torch.equal(model.head.weight, before)


def test_gradient_accumulation_equals_the_full_batch_gradient():
    model = build_model_small()
    batch = random_batch(10, 1, 8, 7, seed=3)
    grads = []
    for micro in (0, 3, 1):
        stepper = stepper_for(model, micro)
        loss = stepper.backward(batch).item()
        grads.append((loss, [p.grad.clone() for p in model.parameters()]))
    (full_loss, full), *others = grads
    for loss, accumulated in others:
        assert loss == pytest.approx(full_loss, rel=1e-6)
        for a, b in zip(accumulated, full):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_mixup_and_label_smoothing_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
    y, y_mix, lam = torch.tensor([1, 0]), torch.tensor([0, 2]), torch.tensor([0.7, 1.0])
    eps = 0.3
    z = math.log(math.exp(1) + math.exp(2) + 1)
    logp = [1 - z, 2 - z, -z]
    smooth = -sum(logp) / 3
    first = 0.7 * ((1 - eps) * -logp[1] + eps * smooth) + 0.3 * ((1 - eps) * -logp[0] + eps * smooth)
    second = math.log(3)  # uniform logits: every class has log p = -log 3, whatever the targets
    got = mixed_loss(logits, y, y_mix, lam, eps)
    assert got.tolist() == pytest.approx([first, second], rel=1e-6)
    # The same as PyTorch's cross_entropy with label_smoothing, mixed per example.
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(
        got, lam * ce(logits, y, reduction="none", label_smoothing=eps)
        + (1 - lam) * ce(logits, y_mix, reduction="none", label_smoothing=eps))


def both_lions(shapes, fused: bool, steps: int, g: torch.Generator):
    """Our LION and lion-pytorch's stepped side by side on the same random parameters and gradients."""
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Lion(ours, lr=1e-3, weight_decay=0.1, fused=fused)
    b = lion_pytorch.Lion(theirs, lr=1e-3, weight_decay=0.1)
    for step in range(steps):
        for p, q, s in zip(ours, theirs, shapes):
            grad = torch.randn(s, generator=g) * 10.0 ** (step % 5 - 2)
            grad.view(-1)[:3] = 0  # exact zeros: sign 0, no update from the gradient
            p.grad, q.grad = grad.clone(), grad.clone()
        for opt in (a, b):
            opt.param_groups[0]["lr"] = 1e-3 * (step + 1)
            opt.step()
    return ours, theirs, a, b


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_lion_is_bit_for_bit_lion_pytorch(fused):
    ours, theirs, a, b = both_lions([(257, 1001), (33,), (3, 5, 7), (4096,)], fused, 12, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    assert all(torch.equal(a.state[p]["exp_avg"], b.state[q]["exp_avg"]) for p, q in zip(ours, theirs))
    # Same state_dict layout: a lion-pytorch checkpoint loads into ours.
    a.load_state_dict(b.state_dict())


def test_schedules():
    total = 100
    constant = [lr_at(s, total, lr=1.0, schedule="constant", warmup_steps=10) for s in range(total)]
    assert constant[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert constant[10:] == [1.0] * 90
    cosine = [lr_at(s, total, lr=2.0, schedule="cosine", warmup_steps=10) for s in range(total + 1)]
    assert cosine[9] == pytest.approx(2.0) and cosine[10] == pytest.approx(2.0)
    assert cosine[55] == pytest.approx(1.0)  # half way through the decay
    assert cosine[total] == pytest.approx(0.0, abs=1e-12) and 0 < cosine[total - 1] < 1e-3
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    wsd = [lr_at(s, total, lr=1.0, schedule="wsd", warmup_steps=5, decay_fraction=0.2) for s in range(total + 1)]
    assert wsd[4] == pytest.approx(1.0) and wsd[5:81] == [1.0] * 76
    assert wsd[80:] == pytest.approx([(total - s) / 20 for s in range(80, total + 1)])
    assert lr_at(7, total, lr=1.0, schedule="wsd", decay_fraction=0.0) == 1.0


def test_model_init_is_seeded_and_leaves_the_global_rng_alone():
    spec = grid_spec(downstream=False)
    state = torch.get_rng_state()
    a, b = init_model(spec), init_model(spec)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    other = init_model(JobSpec.from_dict({**spec.to_dict(), "seed": 1}))
    assert not torch.equal(a.embed.weight, other.embed.weight)


@needs_fashion
def test_compiled_training_with_fused_lion_resumes_bit_identically(tmp_path):
    """compile = true: torch.compile'd model and fused LION update, still exact across a resume."""
    quiet = {**RESUME, "evaluation": "upstream = false", "downstream": False}  # training only
    spec = grid_spec(**quiet, train="compile = true")
    whole = tmp_path / "whole.pt"
    reference = train(spec, checkpoint=whole)
    assert reference.status == "done" and math.isfinite(reference.loss)
    pieces = tmp_path / "pieces.pt"
    progress, should_stop = stop_after(5)
    assert train(spec, checkpoint=pieces, on_progress=progress, should_stop=should_stop).status == "interrupted"
    assert train(spec, checkpoint=pieces).status == "done"
    expected, got = final_weights(whole), final_weights(pieces)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    eager = train(grid_spec(**quiet), checkpoint=tmp_path / "e.pt")
    assert eager.loss == pytest.approx(reference.loss, rel=1e-3)  # the same training, up to compiled rounding


class OutOfMemoryAbove(torch.nn.Module):
    """The model, but a forward over more than `rows` examples raises CUDA's out-of-memory error,
    as a GPU with too little memory for the micro-batch does (the error is torch's own)."""

    def __init__(self, model: torch.nn.Module, rows: int):
        super().__init__()
        self.model, self.rows, self.sizes = model, rows, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.rows:
            self.model(x).sum().backward()  # a partial gradient is left behind, as a real OOM mid-backward would
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {len(x)} rows do not fit")
        return self.model(x)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_full_batch_gradient():
    model = build_model_small()
    batch = random_batch(10, 1, 8, 7, seed=4)
    full = stepper_for(model)
    full_loss = full.backward(batch).item()
    expected = [p.grad.clone() for p in model.parameters()]

    limited = OutOfMemoryAbove(model, rows=3)
    stepper = stepper_for(model, forward=limited)
    notes = stepper.notes
    loss = stepper.backward(batch).item()
    assert notes == ["CUDA OOM at micro-batch 10: halved to 5", "CUDA OOM at micro-batch 5: halved to 2"]
    assert stepper.micro_batch_size == 2
    assert limited.sizes == [10, 5, 2, 2, 2, 2, 2]  # the failed attempts, then the batch in micro-batches of 2
    assert loss == pytest.approx(full_loss, rel=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # The next batch starts at the halved size: no failed attempt.
    limited.sizes.clear()
    stepper.backward(batch)
    assert limited.sizes == [2] * 5 and len(notes) == 2


def test_out_of_memory_at_one_example_is_raised():
    model = build_model_small()
    stepper = stepper_for(model, label_smoothing=0.0, forward=OutOfMemoryAbove(model, rows=0))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        stepper.backward(random_batch(4, 1, 8, 7))
    assert stepper.notes == ["CUDA OOM at micro-batch 4: halved to 2", "CUDA OOM at micro-batch 2: halved to 1"]


def test_gradient_clipping_scales_the_global_norm():
    """grad_clip = c: the step uses g * min(1, c / ||g||), the norm taken over all parameters together."""
    batch = random_batch(8, 1, 8, 7, seed=5)
    model = build_model_small()
    before = [p.detach().clone() for p in model.parameters()]
    plain = stepper_for(model)
    plain.backward(batch)
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
    for clip in (norm / 4, norm * 4):
        model = build_model_small()
        stepper = stepper_for(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), grad_clip=clip)
        stepper.backward(batch)
        stepper.step(0.5)
        scale = min(1.0, clip / norm)
        for p, p0, g in zip(model.parameters(), before, grads):
            torch.testing.assert_close(p.detach(), p0 - 0.5 * scale * g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,lr", [("lion", 3e-3), ("adamw", 3e-3), ("sgd", 0.1)])
def test_each_optimizer_lowers_the_loss_on_a_fixed_batch(name, lr):
    model = build_model_small()
    optimizer = make_optimizer(name, model.parameters(), lr=lr, weight_decay=1e-4, momentum=0.9)
    stepper = stepper_for(model, label_smoothing=0.0, optimizer=optimizer)
    batch = random_batch(32, 1, 8, 7, seed=6)
    losses = []
    for _ in range(20):
        losses.append(stepper.backward(batch).item())
        stepper.step(lr)
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 0.29 (lion), 0.33 (adamw), 0.25 (sgd)


# ---------------------------------------------------------------- the GPU recipe's parts, checked on the CPU


SHAPE_SETS = [[(257, 1001), (33,), (3, 5, 7), (4096,)]] + [[(8 * k, 5 + k), (5 + k,), (k + 1,)] for k in range(1, 10)]


def test_fused_lion_is_lion_pytorch_for_every_model_without_recompiling():
    """One compiled per-parameter update serves ten different parameter lists in one process (as a
    worker trains model after model): bit for bit lion-pytorch's, and dynamo's recompile limit,
    which would fall back to an inexact eager update, is never reached."""
    from torch._dynamo.utils import counters

    g = torch.Generator().manual_seed(1)
    graphs = []
    for shapes in SHAPE_SETS:
        ours, theirs, _, _ = both_lions(shapes, True, 3, g)
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == [graphs[1]] * (len(SHAPE_SETS) - 1), graphs  # after the first set, nothing compiles


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_loss_equals_the_fp32_loss_and_gradient(dtype, monkeypatch):
    """bf16/fp16 logits: the blockwise loss and the compiled formula give the loss and gradient of
    log_softmax over an fp32 copy, on a padded head's logits (a strided view) and blocks of rows
    that do not divide the batch, with a partner equal to the label for some rows."""
    from scaling_study import evaluate

    monkeypatch.setattr(evaluate, "LOSS_BLOCK_ELEMENTS", 7 * 1123)
    g = torch.Generator().manual_seed(2)
    rows, classes = 50, 1123
    padded = (torch.randn(rows, classes + 29, generator=g) * 4).to(dtype)
    y = torch.randint(0, classes, (rows,), generator=g)
    y_mix = y.roll(1)
    y_mix[:5] = y[:5]
    lam, weights = torch.rand(rows, generator=g), torch.rand(rows, generator=g)

    def loss_and_grad(fn):
        logits = padded.clone().requires_grad_()
        loss = fn(logits[:, :classes], y, y_mix, lam, 0.3)
        (loss * weights).sum().backward()
        return loss.detach(), logits.grad

    expected, expected_grad = loss_and_grad(lambda x, *rest: mixed_loss(x.float(), *rest))
    assert expected.dtype == torch.float32
    for fn in (mixed_loss, evaluate.compiled_mixed_loss()):
        loss, grad = loss_and_grad(fn)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        assert grad.dtype == dtype and not grad[:, classes:].any()
        torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=0.02, atol=1e-5)


def test_padded_head_gives_the_unpadded_logits_and_gradients():
    """pad_classes_to (the CUDA default) changes neither parameters, logits nor gradients."""
    spec = parse_model("B-2/Wi-16", "test")
    models = []
    for pad in (1, 64):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            models.append(build(spec, 48, 11, pad_classes_to=pad))
    plain, padded = models
    assert padded.padded_classes == 64 and plain.padded_classes == 11
    assert plain.state_dict().keys() == padded.state_dict().keys()
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    outputs = [model(x) for model in models]
    assert outputs[1].shape == (5, 11)
    torch.testing.assert_close(outputs[1], outputs[0])
    for out in outputs:
        out.square().sum().backward()
    for p, q in zip(plain.parameters(), padded.parameters()):
        assert p.shape == q.shape
        torch.testing.assert_close(q.grad, p.grad)


def test_ten_models_train_compiled_in_one_process_without_falling_back_to_eager():
    """compile = true in a long-running worker: each job's model compiles, none hits dynamo's
    recompile limit (made an error here: past it, dynamo would silently run eager)."""
    from scaling_study.bench import synthetic_spec
    from scaling_study.grid import TrainConfig
    from scaling_study.train import build_stepper

    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for i in range(10):
            name = f"B-{1 + i % 3}/Wi-{8 * (1 + i // 3)}"
            train_config = TrainConfig(batch_size=6, compile=True, precision="fp32")
            stepper = build_stepper(synthetic_spec(name, resolution=4, channels=1, classes=5, train=train_config),
                                    torch.device("cpu"), [])
            eager = stepper_for(stepper.model).backward(random_batch(6, 1, 4, 5, seed=i))
            loss = stepper.backward(random_batch(6, 1, 4, 5, seed=i))
            stepper.step(1e-3)
            assert loss.item() == pytest.approx(eager.item(), rel=1e-4)  # compiled, and the same model


@needs_fashion
def test_resume_of_a_checkpoint_from_a_machine_with_more_gpus(tmp_path):
    """A checkpoint carrying CUDA generator states for more devices than are visible (here two, on a
    machine with none) resumes, bit-identically: training draws from no CUDA generator."""
    spec = grid_spec(**{**RESUME, "evaluation": "upstream = false", "downstream": False})
    reference = train(spec, checkpoint=tmp_path / "whole.pt")
    pieces = tmp_path / "pieces.pt"
    progress, should_stop = stop_after(5)
    assert train(spec, checkpoint=pieces, on_progress=progress, should_stop=should_stop).status == "interrupted"
    state = torch.load(pieces, weights_only=True)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    torch.save(state, pieces)
    assert torch.cuda.device_count() < 2
    resumed = train(spec, checkpoint=pieces)
    assert resumed.status == "done" and resumed.loss == reference.loss
    expected, got = final_weights(tmp_path / "whole.pt"), final_weights(pieces)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@needs_fashion
def test_checkpoints_at_evaluation_epochs_and_on_the_timer(tmp_path):
    """Not after every epoch: at evaluation epochs, and at an epoch end once checkpoint_every_s has passed."""
    spec = grid_spec(models='"B-1/Wi-16"', examples=500, epochs="[2, 4]", batch=250, downstream=False,
                     evaluation="upstream = false")
    for every_s, expected in ((3600.0, [2, 4]), (0.0, [1, 2, 3, 4])):
        checkpoint, saved = tmp_path / f"every-{every_s}.pt", []

        def on_epoch(epoch, points, checkpoint=checkpoint):
            if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] == epoch:
                saved.append(epoch)

        assert train(spec, checkpoint=checkpoint, checkpoint_every_s=every_s, on_epoch=on_epoch).status == "done"
        assert saved == expected


HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"}


class HostReads(torch.overrides.TorchFunctionMode):
    """Records every read of a tensor's values by the host: (steps taken so far, method, calling file)."""

    def __init__(self):
        super().__init__()
        self.steps, self.reads = 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            caller = Path(sys._getframe(1).f_code.co_filename).name
            self.reads.append((self.steps, name, caller, args[0].dtype if args else None))
        return func(*args, **(kwargs or {}))


@needs_fashion
def test_training_steps_read_nothing_back_between_the_loss_reads(tmp_path):
    """The step (loader, forward, loss, backward, optimizer) reads no value back to the host, which
    on a GPU would stall its queue: the only reads are the losses' every `loss_reads_every` steps and
    at each epoch's end (one tolist in train.py), and the loader's host-side index arrays."""
    spec = grid_spec(**{**RESUME, "evaluation": "upstream = false", "downstream": False})
    per_epoch, every = budget.steps_per_epoch(1000, 128), 3
    mode = HostReads()

    def progress(p):
        mode.steps = p.step

    with mode:
        assert train(spec, on_progress=progress, loss_reads_every=every).status == "done"
    loader = [r for r in mode.reads if r[2] == "loader.py"]
    assert loader and all(name == "numpy" and dtype == torch.int64 for _, name, _, dtype in loader)
    expected, unread = [], 0
    for step in range(1, 2 * per_epoch + 1):
        unread += 1
        if unread == every:  # read right after the step, before its progress is reported
            expected.append(step - 1)
            unread = 0
        if step % per_epoch == 0:
            if unread:
                expected.append(step)
            unread = 0
    assert [r for r in mode.reads if r[2] != "loader.py"] == [(s, "tolist", "train.py", torch.float32) for s in expected]
