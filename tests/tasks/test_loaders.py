"""Task.from_loaders, distillation, BatchNorm re-estimation and the percent scale."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autoprune as ap
from autoprune.tasks import distillation_loss, in_percent, reestimate_batchnorm


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes, learnable
    return TensorDataset(x, y)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _task(model: nn.Module | None = None, **options: object) -> ap.Task:
    train = DataLoader(_data(), batch_size=16, shuffle=True)
    val = DataLoader(_data(40, seed=1), batch_size=16)
    test = DataLoader(_data(50, seed=2), batch_size=16)
    settings: dict[str, object] = {"train": train, "val": val, "test": test, "lr": 0.05, **options}
    return ap.Task.from_loaders(model if model is not None else _model(), **settings)  # type: ignore[arg-type]


def _train_loss(model: nn.Module) -> float:
    x, y = _data().tensors
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


def test_fine_tune_lowers_the_training_loss_and_leaves_eval_mode() -> None:
    task = _task()
    model = task.fresh_model()
    before = _train_loss(model)
    task.fine_tune(model, 30)  # type: ignore[misc]
    assert _train_loss(model) < 0.7 * before
    assert not model.training
    assert _train_loss(task.model) == pytest.approx(before)  # the task's model is untouched


def test_fine_tune_runs_exactly_the_given_optimiser_steps() -> None:
    calls = []

    class Counting(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            calls.append(1)
            return super().step(closure)

    task = _task(optimizer=lambda params: Counting(params, lr=0.01))
    task.fine_tune(task.fresh_model(), 13)  # type: ignore[misc]  # 96 / 16 = 6 batches: cycles the loader
    assert len(calls) == 13
    task.fine_tune(task.fresh_model(), 0)  # type: ignore[misc]
    assert len(calls) == 13


@pytest.mark.parametrize(("lr_schedule", "last_lr"), [("cosine", 0.0), ("constant", 0.05)])
def test_lr_schedule_cosine_decays_each_fine_tune_call_to_zero(lr_schedule: str, last_lr: float) -> None:
    made: list[torch.optim.Optimizer] = []
    seen: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    def optimizer(params: object) -> torch.optim.Optimizer:
        made.append(Recording(params, lr=0.05))  # type: ignore[arg-type]
        return made[-1]

    options: dict[str, object] = {"optimizer": optimizer}
    if lr_schedule != "constant":  # the default
        options["lr_schedule"] = lr_schedule
    task = _task(**options)
    for call in range(2):  # every call gets its own decay, from lr
        seen.clear()
        task.fine_tune(task.fresh_model(), 10)  # type: ignore[misc]
        assert seen[0] == pytest.approx(0.05)
        assert made[call].param_groups[0]["lr"] == pytest.approx(last_lr, abs=1e-12)
        if lr_schedule == "cosine":
            assert seen == sorted(seen, reverse=True) and seen[-1] < 0.01
        else:
            assert set(seen) == {0.05}


def test_evaluate_and_test_equal_a_hand_count() -> None:
    task = _task()
    model = task.model
    for score, data in ((task.evaluate, _data(40, seed=1)), (task.test, _data(50, seed=2))):
        x, y = data.tensors
        with torch.no_grad():
            right = int((model(x).argmax(1) == y).sum())
        assert score(model) == pytest.approx(100.0 * right / len(y))  # type: ignore[misc]


def test_evaluate_samples_are_the_hits_per_example_and_their_mean_is_evaluate() -> None:
    from autoprune.evaluation import drop_standard_error, sample_mean

    task = _task()
    model = task.model
    x, y = _data(40, seed=1).tensors
    with torch.no_grad():
        hits = model(x).argmax(1) == y
    samples = task.evaluate_samples(model)  # type: ignore[misc]
    assert samples is not None and samples.dtype == torch.float64
    assert samples.tolist() == [100.0 if h else 0.0 for h in hits.tolist()]
    assert sample_mean(samples) == task.evaluate(model)
    # a model that flips 3 examples right and 1 wrong: paired error sqrt(var(d) / n)
    other = copy.deepcopy(model)
    flipped = samples.clone()
    wrong = [i for i, h in enumerate(hits.tolist()) if not h][:3]
    right = [i for i, h in enumerate(hits.tolist()) if h][:1]
    flipped[wrong], flipped[right] = 100.0, 0.0
    d = (samples - flipped).tolist()
    mean = sum(d) / 40
    assert drop_standard_error(samples, flipped) == pytest.approx((sum((v - mean) ** 2 for v in d) / 39 / 40) ** 0.5)
    assert drop_standard_error(samples, task.evaluate_samples(other)) == 0.0  # type: ignore[misc]
    # a fraction task scales them like evaluate
    fraction = _task(scale="fraction")
    scaled, _ = in_percent(fraction, fraction.evaluate(fraction.model))
    assert scaled.evaluate_samples(model).max() == 10000.0  # type: ignore[misc, union-attr]


def test_evaluate_samples_only_where_the_order_holds_and_the_metric_splits() -> None:
    shuffled = _task(val=DataLoader(_data(40, seed=1), batch_size=16, shuffle=True))
    assert shuffled.evaluate_samples is not None and shuffled.evaluate_samples(shuffled.model) is None
    assert _task(metric=lambda o, t: 1.0).evaluate_samples is None  # a metric of the whole split
    # a loader whose order changes between calls (its own random order, not a RandomSampler)
    data = _data(40, seed=1)

    class Reordering:
        calls = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Reordering.calls += 1
            order = torch.randperm(40, generator=torch.Generator().manual_seed(Reordering.calls))
            for i in range(0, 40, 16):
                yield data[order[i : i + 16]]

    task = _task(val=Reordering())
    assert task.evaluate_samples(task.model) is not None  # type: ignore[misc]
    assert task.evaluate_samples(task.model) is None  # type: ignore[misc]


def test_custom_metric_gets_every_output_and_target() -> None:
    seen = []

    def count(outputs: torch.Tensor, targets: torch.Tensor) -> int:
        seen.append((outputs.shape, targets.shape))
        return int((outputs.argmax(1) == targets).sum())

    task = _task(metric=count)
    seen.clear()
    assert task.evaluate(task.model) == float(
        count(task.model(_data(40, seed=1).tensors[0]), _data(40, seed=1).tensors[1])
    )
    assert seen[0] == (torch.Size([40, 3]), torch.Size([40]))
    assert task.metric_name == "count"


def test_same_seed_same_result_other_seed_other_result() -> None:
    def tuned(seed: int) -> list[torch.Tensor]:
        task = _task(seed=seed)
        model = task.fresh_model()
        task.fine_tune(model, 10)  # type: ignore[misc]
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = tuned(0), tuned(0), tuned(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_fine_tune_leaves_the_callers_random_state_alone() -> None:
    task = _task()
    torch.manual_seed(123)
    task.fine_tune(task.fresh_model(), 5)  # type: ignore[misc]
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))


def test_distillation_term_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(8, 5)
    assert float(distillation_loss(logits, logits.clone(), 4.0)) == 0.0
    other = distillation_loss(logits, torch.randn(8, 5), 4.0)
    assert float(other) > 0.0
    # T**2 * KL(teacher || student) by hand
    t, s = F.softmax(torch.randn(3, 4), -1), F.softmax(torch.randn(3, 4), -1)
    by_hand = float((t * (t.log() - s.log())).sum(-1).mean())
    assert float(distillation_loss(s.log(), t.log(), 1.0)) == pytest.approx(by_hand, rel=1e-4)
    assert float(distillation_loss(2 * s.log(), 2 * t.log(), 2.0)) == pytest.approx(4 * by_hand, rel=1e-4)


def test_distill_fine_tune_runs_and_plain_fine_tune_does_not_distill() -> None:
    plain_task = _task()
    assert plain_task.distill_fine_tune is None
    task = _task(distill=(2.0, 3.0))
    assert task.distill_fine_tune is not None
    a, b = task.fresh_model(), task.fresh_model()
    task.fine_tune(a, 8)  # type: ignore[misc]
    plain = copy.deepcopy(a)
    plain_task.fine_tune(plain, 0)  # type: ignore[misc]
    task.distill_fine_tune(b, 8)
    assert not b.training
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    # plain fine_tune of the distilling task is exactly the non-distilling task's fine_tune
    c = plain_task.fresh_model()
    plain_task.fine_tune(c, 8)  # type: ignore[misc]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    # the teacher is a frozen copy of the unpruned model
    teacher_before = _train_loss(task.model)
    task.distill_fine_tune(task.fresh_model(), 3)
    assert _train_loss(task.model) == teacher_before


def test_distillation_adds_nothing_while_student_equals_teacher() -> None:
    # No BatchNorm or dropout: the student in train mode computes what the teacher computes,
    # so one distilling step is the plain step.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    task = _task(model, distill=(5.0, 2.0))
    a, b = task.fresh_model(), task.fresh_model()
    task.fine_tune(a, 1)  # type: ignore[misc]
    task.distill_fine_tune(b, 1)  # type: ignore[misc]
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_dict_batches_and_a_named_output() -> None:
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 3)

        def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"hidden": features, "scores": self.linear(features)}

    x, y = _data().tensors
    batches = [{"features": x[i : i + 16], "labels": y[i : i + 16]} for i in range(0, 96, 16)]
    task = ap.Task.from_loaders(DictModel(), train=batches, val=batches, output="scores", lr=0.1)
    assert task.output == "scores"
    assert torch.equal(task.example_inputs["features"], x[:16])
    before = task.evaluate(task.model)
    model = task.fresh_model()
    task.fine_tune(model, 40)  # type: ignore[misc]
    assert task.evaluate(model) > before


def test_calibrate_reestimates_batchnorm_on_train_batches() -> None:
    task = _task()
    model = task.fresh_model()
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    task.calibrate(model)  # type: ignore[misc]
    x = torch.cat([b[0] for b in task.fine_tune.__self__.train][:8])  # type: ignore[union-attr]
    with torch.no_grad():
        hidden = model[0](x)
    # 96 rows in 6 batches: all of them, averaged over batches of equal size.
    torch.testing.assert_close(bn.running_mean, hidden.mean(0), rtol=1e-4, atol=1e-5)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_reestimate_batchnorm_restores_modes_and_momentum() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.5)).eval()
    weights = [p.detach().clone() for p in model.parameters()]
    batches = [torch.randn(4, 1, 6, 6) * 2 + 1 for _ in range(3)]
    out = reestimate_batchnorm(model, batches)
    assert out is model and not model.training and not model[1].training and not model[2].training
    assert model[1].momentum == 0.3
    assert int(model[1].num_batches_tracked) == 3
    with torch.no_grad():
        conv = torch.cat([model[0](b) for b in batches])
    torch.testing.assert_close(model[1].running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(weights, model.parameters(), strict=True))
    plain = nn.Linear(2, 2)
    assert reestimate_batchnorm(plain, [torch.randn(1, 2)]) is plain  # no BatchNorm: nothing to do


# ---------------------------------------------------------------------------- bad arguments
class _Bad:
    """Loaders and callables that break one rule each."""

    empty: list[object] = []
    wrong_width = [(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))]
    not_pairs = [torch.randn(4, 6)]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"train": _Bad.empty}, r"^train: the loader yields no batches"),
        ({"val": _Bad.empty}, r"^val: the loader yields no batches"),
        ({"test": _Bad.empty}, r"^test: the loader yields no batches"),
        ({"train": 3}, r"^train must be a DataLoader \(an iterable of batches\), but got int"),
        ({"val": _Bad.wrong_width}, r"^val: the model cannot take a batch of this loader \(RuntimeError: "),
        ({"train": _Bad.not_pairs}, r"^train: a batch must be \(inputs, target\)"),
        ({"metric": lambda o, t: [1.0]}, r"^metric must return a number, but returned list \(scoring val\)"),
        ({"metric": "top5"}, r"^metric must be one of \('top1',\) or a callable"),
        ({"optimizer": "adam"}, r"^optimizer must be one of \('sgd', 'adamw'\) or a callable"),
        ({"lr": 0}, r"^lr must be a finite number > 0, but got lr=0$"),
        ({"lr": -1e-3}, r"^lr must be a finite number > 0"),
        ({"weight_decay": -1.0}, r"^weight_decay must be a finite number >= 0"),
        ({"distill": (1.0,)}, r"^distill must be None or \(weight > 0, temperature > 0\), but got distill=\(1.0,\)$"),
        ({"distill": (1.0, 0.0)}, r"^distill must be None or \(weight > 0, temperature > 0\)"),
        ({"seed": 1.5}, r"^seed must be an int, but got seed=1.5$"),
        ({"loss": "mse"}, r"^loss must be None \(cross-entropy\) or a callable"),
        ({"loss": lambda o, t: [0.0]}, r"^loss must return a scalar tensor, but returned list$"),
        ({"output": "logits"}, r"^output: output 'logits' is not a tensor"),
        ({"scale": "percentage"}, r"^task scale must be one of \('percent', 'fraction'\) or None"),
        ({"device": "gpu7"}, r"^device must be a torch device such as 'cpu' or 'cuda:0', but got 'gpu7'"),
        ({"calibration_batches": 0}, r"^calibration_batches must be an int >= 1"),
        ({"lr_schedule": "linear"}, r"^lr_schedule must be one of 'cosine', 'constant', but got lr_schedule='linear'$"),
    ],
)
def test_every_bad_argument_gets_one_clear_line(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ap.TaskError, match=needle) as info:
        _task(**options)
    assert "\n" not in str(info.value)


def test_not_a_module_is_refused() -> None:
    with pytest.raises(ap.TaskError, match="^model must be a torch.nn.Module, but got str$"):
        ap.Task.from_loaders("resnet", train=[], val=[])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- percent
def _fraction_task(scale: str | None = None) -> ap.Task:
    return ap.Task(
        name="frac",
        model=nn.Linear(1, 1),
        example_inputs=torch.zeros(1, 1),
        evaluate=lambda m: 0.9,
        test=lambda m: 0.85,
        scale=scale,
    )


def test_fraction_scores_become_percent_with_a_notice() -> None:
    task = _fraction_task()
    scaled, notice = in_percent(task, 0.9)
    assert scaled.evaluate(task.model) == pytest.approx(90.0)
    assert scaled.test(task.model) == pytest.approx(85.0)  # type: ignore[misc]
    assert scaled.scale == "percent" and task.scale is None and task.evaluate(task.model) == 0.9
    assert notice is not None and "\n" not in notice
    assert "task 'frac' scores as a fraction (unpruned 0.9000, inferred: <= 1.0)" in notice
    assert "percentage points" in notice
    # Applying it again changes nothing: the copy says it is in percent.
    assert in_percent(scaled, 90.0) == (scaled, None)


@pytest.mark.parametrize(
    ("scale", "score", "scaled"), [("fraction", 1.5, True), ("percent", 0.5, False), (None, 93.0, False)]
)
def test_declared_scale_wins_over_the_inferred_one(scale: str | None, score: float, scaled: bool) -> None:
    task, notice = in_percent(_fraction_task(scale), score)
    assert (notice is not None) is scaled
    assert task.evaluate(task.model) == pytest.approx(90.0 if scaled else 0.9)
    if scale == "fraction":
        assert "declared scale='fraction'" in notice  # type: ignore[operator]


def test_bad_scale_names_the_allowed_values() -> None:
    with pytest.raises(ap.TaskError, match=r"scale must be one of \('percent', 'fraction'\) or None .*scale='%'"):
        _fraction_task("%")
    task = _fraction_task()
    task.scale = "pct"
    with pytest.raises(ap.TaskError, match="scale='pct'"):
        in_percent(task, 0.9)


def test_a_fraction_task_from_loaders_gets_the_notice() -> None:
    task = _task(metric=lambda o, t: float((o.argmax(1) == t).float().mean()))
    score = task.evaluate(task.model)
    x, y = _data(40, seed=1).tensors  # the validation split, as a fraction
    with torch.no_grad():
        assert score == pytest.approx(float((task.model.eval()(x).argmax(1) == y).double().mean()), abs=1e-6)
    scaled, notice = in_percent(task, score)
    assert notice is not None
    assert scaled.evaluate(task.model) == pytest.approx(100 * score)


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fine_tune_and_evaluate_run_on_the_task_device() -> None:
    task = _task(device="cuda", distill=(1.0, 2.0))
    assert next(task.model.parameters()).is_cuda
    assert task.example_inputs.is_cuda
    model = task.fresh_model()
    task.fine_tune(model, 5)  # type: ignore[misc]
    task.distill_fine_tune(model, 5)  # type: ignore[misc]
    assert next(model.parameters()).is_cuda
    cpu_model = copy.deepcopy(model).cpu()
    score = task.evaluate(cpu_model)
    assert next(cpu_model.parameters()).device.type == "cpu"  # evaluation does not move it for good
    assert score == pytest.approx(task.evaluate(model))
