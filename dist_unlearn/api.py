"""The Python entry point: ``dist_unlearn.unlearn(model, loss_fn, retain, forget, method, **options)``.

Example::

    import dist_unlearn
    res = dist_unlearn.unlearn(model, loss_fn, retain, forget, method="cure_newton", max_steps=5)
    res.model                      # the unlearned model (the given one, updated in place; retrain: a new one)
    res.steps[0].step_norm         # per-step records (loss, |g|, |d|, M, HVPs, time, ...)
    res.stats["update_norm"]       # |w_final - w_initial|, wall time, peak memory, HVP / gradient counts
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dist_unlearn.data.batches import count_examples
from dist_unlearn.data.device import model_device, to_device
from dist_unlearn.errors import ConfigError, DataError, ModelError
from dist_unlearn.methods import OuterLoopState, StepRecord, curvature_stats, get_method, run_curvature_method
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.result import UnlearnResult


def unlearn(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    retain: Any = None,
    forget: Any = None,
    method: str = "cure_newton",
    **options: Any,
) -> UnlearnResult:
    """Remove the influence of ``forget`` from ``model`` with the unlearning ``method``.

    Args:
        model: a trained ``nn.Module`` (plain, transformers, or peft/LoRA: only trainable parameters move).
            Updated in place and returned as ``result.model`` (``retrain`` returns a new model).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, the mean loss over the batch. None for
            transformers classification / causal-LM models (``models.default_loss_fn``).
        retain: the retain set (torch ``Dataset``, ``DataLoader`` or ``datasets.Dataset``). Curvature methods
            (``cure_newton``, ...) minimise the retain loss from the trained weights and need only this.
        forget: the forget set (same types), read by grad_ascent, grad_diff, npo and scrub.
        method: a registered name (``dist_unlearn.methods.available_methods()``).
        **options: see :class:`~dist_unlearn.options.UnlearnOptions`; shared names: ``max_steps``, ``M``
            (None = automatic ARC), ``tol``, ``hvp`` ("exact" | "fd" | "ggn"), ``batch_size``, ``seed``.

    Returns:
        UnlearnResult(model, steps, stats).

    Raises:
        ConfigError: unknown method or option (with the closest name), bad option value (e.g. M <= 0).
        DataError: a data set the method needs is missing.
        ModelError: not an nn.Module, no trainable parameters, no default loss for the model.
        NumericalError: NaN/inf loss or gradient; the last good weights are restored first.
    """
    spec = get_method(method)
    given = UnlearnOptions(**options)
    given.check_method(method)
    opts = given.with_defaults(spec.defaults).with_objective(spec.curvature)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model is a {type(model).__name__}; unlearn needs a torch nn.Module.")
    check_loss_fn(loss_fn)
    needs = set(spec.needs)
    if opts.calibration is not None or (
        spec.curvature and (opts.objective != "retain" or opts.gradient == "influence")
    ):
        needs.add("forget")
    for name, data in (("retain", retain), ("forget", forget)):
        if name not in needs:
            continue
        why = f"method {method!r}" + (
            f" with objective={opts.objective!r}, gradient={opts.gradient!r}"
            if spec.curvature and name == "forget"
            else ""
        )
        if data is None:
            raise DataError(
                f"{why} needs the {name} set: pass {name}=<Dataset, DataLoader or datasets.Dataset>."
            )
        if _num_examples(data) == 0:
            raise DataError(
                f"the {name} set is empty (0 examples); {why} reads it. Give at least one example."
            )
    if opts.calibration is not None:
        from dist_unlearn.stop_setup import check_calibration

        check_calibration(opts.calibration, forget, opts.forget_subjects, opts.calibration_subjects)
    if opts.workers is not None:
        if not spec.curvature:
            opts.workers = None  # first-order baselines and retraining always run in-process
        else:
            from dist_unlearn.distributed import run_distributed

            return run_distributed(model, loss_fn, retain, forget, method, opts)
    if loss_fn is None:
        from dist_unlearn.models import default_loss_fn

        loss_fn = default_loss_fn(model)
    if opts.device is not None:
        model.to(opts.device)

    initial = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    if not initial:
        raise ModelError("the model has no trainable parameters (none with requires_grad=True).")
    stats: dict[str, Any] = {"method": method}
    from dist_unlearn.forgetting import forgetting_record, movement_evidence

    measurable = all(d is not None and _num_examples(d) != 0 for d in (forget, retain))
    movement = movement_evidence(model, loss_fn, forget, retain, opts, method) if measurable else None
    with PeakMemory(model_device(model)) as mem:
        t0 = time.perf_counter()
        if spec.curvature:
            out_model, steps, extra = _run_curvature(method, model, loss_fn, retain, forget, opts)
        else:
            run = spec.run(model, loss_fn, retain, forget, opts)
            out_model, steps, extra = run.model, run.steps, dict(run.stats)
            extra.setdefault("total_hvps", 0)
            extra.setdefault("total_gradients", sum(s.gradients for s in steps))
        stats["wall_time"] = time.perf_counter() - t0
    stats["peak_memory_mb"] = mem.peak_mb
    stats["peak_memory_source"] = mem.source
    if not spec.curvature:
        extra.update(_final_retain_metrics(out_model, loss_fn, retain, opts))
        extra.setdefault("stop_reason", _first_order_stop(opts, steps))
    stats.update(extra)
    stats["update_norm"] = _distance(initial, out_model)
    stats["num_steps"] = len(steps)
    stats["accepted_steps"] = sum(1 for s in steps if s.accepted)
    stats.setdefault("final_M", None)
    stats["options"] = opts.public_dict()
    objective = opts.objective if spec.curvature else None
    stats["forgetting"] = forgetting_record(stats.get("stop_checks"), movement, method, objective)
    return UnlearnResult(model=out_model, steps=steps, stats=stats)


def _first_order_stop(opts: UnlearnOptions, steps: list[StepRecord]) -> str:
    """stop_reason of a first-order run: "budget" (``max_example_passes``), "max_steps" or "epochs"."""
    from dist_unlearn.methods.budget import BUDGET_NOTE

    if opts.max_example_passes is not None and (not steps or steps[-1].message.endswith(BUDGET_NOTE)):
        return "budget"
    return "max_steps" if opts.max_steps is not None and len(steps) >= opts.max_steps else "epochs"


def _run_curvature(
    method: str, model: nn.Module, loss_fn: Any, retain: Any, forget: Any, opts: UnlearnOptions
) -> tuple[nn.Module, list[StepRecord], dict[str, Any]]:
    from dist_unlearn.curvature.objective import build_oracle
    from dist_unlearn.curvature.sample import resolve_gradient

    targets = None
    if opts.objective == "match_unseen":
        from dist_unlearn.targets import ForgetTargets

        targets = ForgetTargets(opts.forget_subjects, opts.bin_span)
    stochastic = method == "cure_newton_stochastic"
    hvp_batch = opts.hvp_batch_size if stochastic else None  # cure_newton fixes its own samples
    sample = opts.retain_sample if method == "cure_newton" else "all"
    n_retain = _num_examples(retain) or 0
    opts.gradient = resolve_gradient(opts.gradient, opts.objective, sample, n_retain, forget is not None)
    oracle = build_oracle(
        model,
        loss_fn,
        retain,
        forget,
        objective=opts.objective,
        gradient=opts.gradient,
        forget_weight=opts.forget_weight,
        beta=opts.beta,
        targets=targets,
        hvp=opts.hvp,
        batch_size=opts.batch_size,
        grad_batch_size=opts.grad_batch_size if stochastic else None,
        hvp_batch_size=hvp_batch,
        seed=opts.seed,
        collate_fn=opts.collate_fn,
        device=opts.device,
        progress=False,
    )
    rule_cost = None
    if opts.calibration is not None:
        from dist_unlearn.cost import CostCounter
        from dist_unlearn.stop_setup import local_stop_rule

        rule_cost = CostCounter()
        oracle.stop_rule = local_stop_rule(
            model, oracle.loss_fn, forget, opts, batch_size=oracle.batch_size, cost=rule_cost,
            targets=targets, retain=retain,
        )  # fmt: skip
    state = OuterLoopState(seed=opts.seed)
    steps = run_curvature_method(method, oracle, opts, state=state)
    extra = curvature_stats(oracle, state)
    if rule_cost is not None:  # the stop rule's forward passes are part of the run's cost
        extra["cost"] = rule_cost.merge(extra["cost"] or {}).as_dict()
        extra["stop_rule"] = oracle.stop_rule.describe()
    extra["objective"] = opts.objective
    if stochastic:  # the loop's final values are on a mini-batch: report the full retain loss too
        extra["final_minibatch_loss"] = state.final_loss
        extra.update(_final_retain_metrics(model, loss_fn, retain, opts))
    elif opts.objective != "retain":  # the loop's final values are the objective's
        extra["final_objective"] = state.final_loss
        extra.update(_final_retain_metrics(model, loss_fn, retain, opts))
    return model, steps, extra


_PAIR_NAMES = {
    (a, b)
    for a in (
        "input",
        "inputs",
        "logits",
        "outputs",
        "output",
        "preds",
        "pred",
        "predictions",
        "scores",
        "y_pred",
    )
    for b in ("target", "targets", "labels", "label", "y", "y_true")
}
"""First two parameter names of a (predictions, targets) loss: not the ``loss_fn(model, batch)`` contract."""


def check_loss_fn(loss_fn: Any) -> None:
    """Enforce the contract ``loss_fn(model, batch) -> scalar`` (batch mean), or None for the default.

    A torch loss module (``nn.CrossEntropyLoss()``) or a function of (logits, labels) is the most common
    mistake: both take predictions, not the model, and would fail deep inside a gradient with a shape error.

    Raises:
        ConfigError: not callable, a torch loss module, or a (logits, labels)-style signature.
    """
    if loss_fn is None:
        return
    fix = (
        "unlearn needs loss_fn(model, batch) -> scalar tensor (the batch mean), e.g. "
        "`lambda model, batch: F.cross_entropy(model(batch[0]), batch[1])`."
    )
    if isinstance(loss_fn, nn.modules.loss._Loss):
        raise ConfigError(
            f"loss_fn is a torch loss module ({type(loss_fn).__name__}), which takes (predictions, targets); "
            + fix
        )
    if not callable(loss_fn):
        raise ConfigError(f"loss_fn is a {type(loss_fn).__name__}, not a function; " + fix)
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    names = [
        p.name.lower()
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(names) >= 2 and tuple(names[:2]) in _PAIR_NAMES:
        raise ConfigError(
            f"loss_fn{sig} looks like a loss of ({names[0]}, {names[1]}): it takes predictions, not the "
            "model; " + fix
        )


def _num_examples(data: Any) -> int | None:
    from torch.utils.data import DataLoader

    inner = data.dataset if isinstance(data, DataLoader) else data
    try:
        return len(inner)
    except TypeError:
        return None


def _final_retain_metrics(
    model: nn.Module, loss_fn: Any, retain: Any, opts: UnlearnOptions
) -> dict[str, Any]:
    """Retain loss and |gradient| at the returned weights (eval mode), for comparable stats.

    Measured on the fixed retain sample of :func:`~dist_unlearn.curvature.sample.draw_retain_sample` (the
    rows cure_newton's retain term reads, for the same seed), so this report costs the same at any size of
    the training set. A diagnostic: not counted in ``stats["cost"]``.
    """
    if retain is None:
        return {"final_loss": None, "final_grad_norm": None}
    from torch.utils.data import DataLoader

    from dist_unlearn.curvature.sample import draw_retain_sample, subset_rows
    from dist_unlearn.data import make_loader

    collate = opts.collate_fn
    if isinstance(retain, DataLoader):
        collate, retain = collate or retain.collate_fn, retain.dataset
    rows = draw_retain_sample(opts.retain_sample, "all", len(retain), opts.seed, opts.objective).grad_rows
    retain = subset_rows(retain, rows)

    params = [p for p in model.parameters() if p.requires_grad]
    device = model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    acc = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for p in params]
    try:
        for batch in make_loader(retain, int(opts.batch_size or 64), collate_fn=collate):
            batch = to_device(batch, device)
            n = count_examples(batch)
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            total += n * float(loss.detach())
            count += n
            for a, g in zip(acc, grads, strict=True):
                if g is not None:
                    a.add_(g.to(a.dtype), alpha=n)
    finally:
        model.train(was_training)
    gnorm = math.sqrt(sum(float(a.double().pow(2).sum()) for a in acc)) / max(count, 1)
    return {"final_loss": total / max(count, 1), "final_grad_norm": gnorm}


def _distance(initial: dict[str, torch.Tensor], model: nn.Module) -> float | None:
    """|w_final - w_initial| over the initially trainable parameters (None when the shapes differ)."""
    final = dict(model.named_parameters())
    sq = 0.0
    for name, p0 in initial.items():
        p = final.get(name)
        if p is None or p.shape != p0.shape:
            return None
        sq += float((p.detach().to("cpu").double() - p0.double()).pow(2).sum())
    return math.sqrt(sq)


class PeakMemory:
    """Peak memory over a block: CUDA peak allocation on a GPU, else the sampled peak RSS of the process."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.peak_mb: float | None = None
        self.source = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "torch.cuda.max_memory_allocated"
            return self
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil ships with deepspeed
            self.source = "unavailable"
            return self
        proc = psutil.Process()
        self._peak = proc.memory_info().rss
        self.source = "process RSS (sampled)"

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._proc = proc
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.peak_mb = self._peak / 2**20
