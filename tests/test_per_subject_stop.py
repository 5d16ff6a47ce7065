"""The per-subject stop rule, the ``match_unseen`` objective and the first-order stop rule on a memorised MLP.

References: the per-subject criterion recomputed with :func:`dist_unlearn.eval.subjects.subject_scores` on
the model's own per-example losses; bins against numpy quantiles by hand; the objective's gradient and HVP
against autograd on a closed-form function of the weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_stopping import loss_fn, losses, memorised_problem
from torch.utils.data import TensorDataset

from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.eval.mia import loss_mia_auc
from dist_unlearn.eval.subjects import subject_scores
from dist_unlearn.stopping import ForgetStopRule
from dist_unlearn.targets import ForgetTargets, unseen_bins

SUBJECTS = ["ann"] * 4 + ["bob"] * 4  # the 8 forget rows of memorised_problem(): two people


def test_per_subject_rule_flags_what_an_aggregate_auc_passes():
    """One subject still fitted, one pushed past unseen data: aggregate AUC 0.5, decision overshoot."""
    cal = np.linspace(1.0, 4.0, 40)
    recognisable, conspicuous = [0.01, 0.02, 0.03, 0.04], [9.0, 9.5, 10.0, 10.5]
    forget = np.array(recognisable + conspicuous)
    assert loss_mia_auc(forget, cal) == pytest.approx(0.5)
    aggregate = ForgetStopRule(lambda: (forget, cal)).check(0)
    assert aggregate.decision == "stop" and aggregate.criterion == "aggregate"
    check = ForgetStopRule(lambda: (forget, cal), forget_subjects=SUBJECTS).check(0)
    assert check.criterion == "per_subject" and check.decision == "overshoot"
    assert check.recognisable == ["ann"] and check.conspicuous == ["bob"]
    ref = {s.subject: s.status for s in subject_scores(forget, SUBJECTS, cal)}
    assert {s["subject"]: s["status"] for s in check.subjects} == ref
    # only recognisable: go on; both in the middle: stop
    still = np.array(recognisable + [2.4, 2.5, 2.6, 2.7])
    assert ForgetStopRule(lambda: (still, cal), forget_subjects=SUBJECTS).check(0).decision == "continue"
    middle = np.array([2.0, 2.4, 2.6, 3.0] * 2)
    assert ForgetStopRule(lambda: (middle, cal), forget_subjects=SUBJECTS).check(0).decision == "stop"
    # single-row subjects cannot be judged one by one: the aggregate criterion applies
    assert not ForgetStopRule(lambda: (forget, cal), forget_subjects=list(range(8))).per_subject
    with pytest.raises(DataError, match="forget_subjects has 3 values"):
        ForgetStopRule(lambda: (forget, cal), forget_subjects=["a", "a", "b"]).check(0)


def test_unseen_bins_by_hand():
    u = np.arange(1.0, 11.0)  # 10 unseen losses
    f = np.array([0.5, 0.1, 0.3, 7.0, 0.2])
    lo, hi, w = unseen_bins(f, u, ["a", "a", "a", "b", "b"])
    edges_a = np.quantile(u, [0, 1 / 3, 2 / 3, 1])  # subject a: 3 rows, ranks by loss 0.1 < 0.3 < 0.5
    assert lo[[1, 2, 0]] == pytest.approx(edges_a[:-1]) and hi[[1, 2, 0]] == pytest.approx(edges_a[1:])
    edges_b = np.quantile(u, [0, 0.5, 1])  # subject b: 0.2 < 7.0
    assert (lo[4], hi[4], lo[3], hi[3]) == pytest.approx((edges_b[0], edges_b[1], edges_b[1], edges_b[2]))
    assert (
        w.sum() == pytest.approx(1.0)
        and w[:3] == pytest.approx([1 / 6] * 3)
        and w[3:] == pytest.approx([0.25] * 2)
    )
    t = ForgetTargets(["a", "a", "a", "b", "b"], span=1.0)
    t.update(f, u)
    inside = np.array([8.0, edges_a[1], edges_a[2], edges_b[2], 0.9])  # the last is below its bin [1, 5.5]
    assert t.in_bins(inside).tolist() == [True, True, True, True, False]
    # F = sum_i v_i (d_i / m)^2 / 2, m the median unseen loss (5.5): only the last row is out, by 0.1
    assert t.penalty(inside) == pytest.approx(0.25 * 0.5 * (0.1 / 5.5) ** 2)
    # span 0.5 (the default): the bins cover the central half, levels 0.25 + 0.5 r / n
    lo, hi, _ = unseen_bins(f, u, ["a", "a", "a", "b", "b"], span=0.5)
    central = np.quantile(u, 0.25 + 0.5 * np.arange(4) / 3)
    assert lo[[1, 2, 0]] == pytest.approx(central[:-1]) and hi[[1, 2, 0]] == pytest.approx(central[1:])


def test_match_unseen_gradient_and_hvp_match_autograd():
    from dist_unlearn.curvature.objective import build_oracle
    from dist_unlearn.targets import bin_penalty

    torch.manual_seed(0)
    X = torch.randn(30, 3, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    (Xr, yr), (Xf, yf) = (X[8:], y[8:]), (X[:8], 1 - y[:8])
    targets = ForgetTargets(SUBJECTS)
    with torch.no_grad():
        lf = F.cross_entropy(net(Xf), yf, reduction="none").numpy()
    targets.update(lf, lf.mean() + np.linspace(-0.5, 1.5, 12))  # some rows below, some inside their bins
    alpha = 0.7
    retain, forget = TensorDataset(Xr, yr), TensorDataset(Xf, yf)
    oracle = build_oracle(net, loss_fn, retain, forget, objective="match_unseen", forget_weight=alpha,
                          targets=targets, batch_size=5)  # fmt: skip
    table = targets.table

    def f(w):
        from torch.func import functional_call

        names = [n for n, _ in net.named_parameters()]
        shapes = [p.shape for _, p in net.named_parameters()]
        parts = torch.split(w, [p.numel() for p in net.parameters()])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        out = lambda x: functional_call(net, params, (x,))  # noqa: E731
        li = F.cross_entropy(out(Xf), yf, reduction="none")
        term = (table[:, 2] * bin_penalty(li, table[:, 0], table[:, 1])).mean()
        return F.cross_entropy(out(Xr), yr) + alpha * term

    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).requires_grad_(True)
    loss, g = oracle.loss_and_gradient()
    (g_ref,) = torch.autograd.grad(f(w), w)
    assert loss == pytest.approx(float(f(w)), rel=1e-12)
    assert torch.allclose(torch.cat([t.reshape(-1) for t in g]), g_ref, rtol=1e-10, atol=1e-12)
    v = tuple(torch.randn_like(p) for p in oracle.params)
    _, hv_ref = torch.autograd.functional.hvp(f, w.detach(), torch.cat([t.reshape(-1) for t in v]))
    hv = torch.cat([t.reshape(-1) for t in oracle.hvp(v)])
    assert torch.allclose(hv, hv_ref, rtol=1e-9, atol=1e-11)


def _judged(model, forget, cal) -> list:
    return subject_scores(losses(model, forget), SUBJECTS, losses(model, cal))


def test_curvature_route_with_calibration_forgets_every_subject():
    import dist_unlearn

    model, retain, forget, cal = memorised_problem()
    assert {s.status for s in _judged(model, forget, cal)} == {"recognisable"}
    res = dist_unlearn.unlearn(model, loss_fn, retain, forget, method="cure_newton", calibration=cal,
                               forget_subjects=SUBJECTS, batch_size=16)  # fmt: skip
    st = res.stats
    assert st["objective"] == "match_unseen"  # calibration given, no objective: the per-subject route
    assert st["stop_reason"] == "forgotten" and st["stop_rule"]["criterion"] == "per_subject"
    assert {s.status for s in _judged(res.model, forget, cal)} == {"forgotten"}  # recomputed independently
    last = st["stop_checks"][-1]
    assert last["decision"] == "stop" and {s["subject"] for s in last["subjects"]} == {"ann", "bob"}
    assert st["forgetting"]["status"] == "forgotten" and st["forgetting"]["criterion"] == "per_subject"


def test_match_unseen_needs_calibration():
    import dist_unlearn

    model, retain, forget, _ = memorised_problem()
    with pytest.raises(ConfigError, match="calibration="):
        dist_unlearn.unlearn(model, loss_fn, retain, forget, objective="match_unseen")
    with pytest.raises(ConfigError, match="calibration="):
        dist_unlearn.unlearn(model, loss_fn, retain, forget, method="match_unseen")


def test_retain_objective_on_a_memorised_model_says_nothing_was_forgotten():
    import dist_unlearn

    model, retain, forget, cal = memorised_problem()
    f0 = losses(model, forget)
    with pytest.warns(UserWarning, match=r"objective='retain'.*calibration="):
        res = dist_unlearn.unlearn(model, loss_fn, retain, forget, method="cure_newton", max_steps=3)
    rec = res.stats["forgetting"]
    assert rec["status"] == "nothing_forgotten"
    # the independent check: the forget rows are still fitted better than unseen data, like before
    assert loss_mia_auc(losses(res.model, forget), losses(res.model, cal)) > 0.9
    assert rec["forget_loss"][0] == pytest.approx(float(f0.mean()), rel=1e-9)


def test_first_order_methods_take_the_per_subject_stop_rule():
    import dist_unlearn

    model, retain, forget, cal = memorised_problem()
    res = dist_unlearn.unlearn(model, loss_fn, retain, forget, method="match_unseen", calibration=cal,
                               forget_subjects=SUBJECTS, epochs=200, lr=1e-2, stop_every=2)  # fmt: skip
    st = res.stats
    assert st["stop_reason"] == "forgotten" and st["stop_rule"]["every"] == 2
    assert {s.status for s in _judged(res.model, forget, cal)} == {"forgotten"}
    assert all(c["step"] % 2 == 1 for c in st["stop_checks"][1:])  # after steps 2, 4, ... (0-based 1, 3, ..)
    # every check is a forward pass over the forget and calibration rows, counted in the run's cost
    assert st["cost"]["by_role"]["calibration"]["by_kind"]["loss"] == len(st["stop_checks"]) * len(cal)


class Scripted:
    """A stop-rule evaluator that replays decisions: losses whose per-subject verdict is the scripted one."""

    CAL = np.linspace(1.0, 4.0, 40)
    LOSSES = {
        "continue": np.array([0.01, 0.02, 0.03, 0.04, 2.4, 2.5, 2.6, 2.7]),
        "overshoot": np.array([2.4, 2.5, 2.6, 2.7, 9.0, 9.5, 10.0, 10.5]),
        "stop": np.array([2.0, 2.4, 2.6, 3.0] * 2),
    }

    def __init__(self, script):
        self.script, self.calls = list(script), 0

    def __call__(self):
        d = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return self.LOSSES[d], self.CAL


def test_first_order_overshoot_returns_to_the_last_good_point_with_half_the_lr():
    from dist_unlearn.methods._training import optimise
    from dist_unlearn.methods.first_order_stop import FirstOrderStop
    from dist_unlearn.options import UnlearnOptions

    model, retain, forget, _ = memorised_problem()
    params = list(model.parameters())
    rule = ForgetStopRule(Scripted(["continue", "continue", "overshoot", "stop"]), forget_subjects=SUBJECTS)
    stop = FirstOrderStop(rule, every=1)
    kept: list[list[torch.Tensor]] = []
    x, yy = forget.tensors

    def objective(batch):
        kept.append([p.detach().clone() for p in params])  # the weights before each step
        return -loss_fn(model, batch)

    opts = UnlearnOptions(lr=0.05, epochs=1, batch_size=2)
    items = lambda e: [(x[i : i + 2], yy[i : i + 2]) for i in range(0, 8, 2)]  # noqa: E731
    records = optimise(model, objective, items, opts, method="t", epochs=1, stop=stop)
    # checks: -1 continue, after step 0 continue, after step 1 overshoot (back to the weights after step 0),
    # after step 2 stop
    assert [c["decision"] for c in stop.checks] == ["continue", "continue", "overshoot", "stop"]
    assert stop.stop_reason == "forgotten" and stop.lr_scale == 0.5 and len(records) == 3
    assert all(
        torch.equal(p, q) for p, q in zip(kept[2], kept[1], strict=True)
    )  # step 2 started at w after step 0
    assert [r.stop_decision for r in records] == ["continue", "overshoot", "stop"]


def test_subject_lists_must_match_the_sets():
    import dist_unlearn

    model, retain, forget, cal = memorised_problem()
    with pytest.raises(DataError, match="forget_subjects has 3 values but the forget set has 8 rows"):
        dist_unlearn.unlearn(model, loss_fn, retain, forget, calibration=cal, forget_subjects=["a"] * 3)
    with pytest.raises(DataError, match="calibration_subjects has 2 values"):
        dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, calibration=cal,
                             calibration_subjects=["a", "b"])  # fmt: skip


def test_retain_guard_refuses_a_step_that_costs_the_retained_rows_their_lead():
    """r0 = 1, c0 = 5 at the weights as given, tolerance 0.1: a step may raise the retained rows' mean loss
    to 1.4 at most; beyond that the check is an overshoot with the guard's record."""
    from dist_unlearn.stop_setup import RetainGuard

    retained = {"loss": 1.0}
    guard = RetainGuard(lambda: np.full(4, retained["loss"]), tolerance=0.1)
    cal = np.full(10, 5.0)
    rule = ForgetStopRule(Scripted(["continue"]), forget_subjects=SUBJECTS)
    rule.evaluate = lambda: (Scripted.LOSSES["continue"], cal)
    rule.guard = guard
    assert rule.check(-1).decision == "continue" and (guard.r0, guard.c0) == (1.0, 5.0)
    retained["loss"] = 1.39
    assert rule.check(0).decision == "continue"
    retained["loss"] = 1.41
    check = rule.check(1)
    assert check.decision == "overshoot" and check.damage["limit"] == pytest.approx(1.4)
    with pytest.raises(ConfigError, match="retain_tolerance"):
        RetainGuard(lambda: np.zeros(1), tolerance=0.0)


def test_sharpness_aware_term_has_the_gradient_of_the_perturbed_point():
    from dist_unlearn.cost import CostCounter
    from dist_unlearn.methods.match_unseen import sharpness_aware

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    term = lambda b: F.cross_entropy(net(b[0]), b[1])  # noqa: E731
    w0 = [p.detach().clone() for p in net.parameters()]
    rho, cost = 0.3, CostCounter()
    value = sharpness_aware(net, term, rho, cost)((x, y))
    (gw, gb) = torch.autograd.grad(value, list(net.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), w0, strict=True))  # weights as they were
    assert float(value) == pytest.approx(float(term((x, y))))
    # reference: the gradient at w + rho g / |g|, by hand
    g = torch.autograd.grad(term((x, y)), list(net.parameters()))
    norm = torch.sqrt(sum((t**2).sum() for t in g))
    with torch.no_grad():
        for p, t in zip(net.parameters(), g, strict=True):
            p.add_(rho * t / norm)
    ref = torch.autograd.grad(term((x, y)), list(net.parameters()))
    assert torch.allclose(gw, ref[0]) and torch.allclose(gb, ref[1])
    assert cost.as_dict()["by_kind"]["gradient"]["examples"] == 5  # the second pass is counted


def test_retain_kl_term_is_zero_with_zero_gradient_at_the_start():
    from dist_unlearn.cost import CostCounter
    from dist_unlearn.methods.match_unseen import retain_objective
    from dist_unlearn.options import UnlearnOptions

    model, retain, _, _ = memorised_problem()
    kl = retain_objective(model, loss_fn, UnlearnOptions(retain_loss="kl"), CostCounter())
    value = kl(retain.tensors)
    grads = torch.autograd.grad(value, list(model.parameters()))
    assert float(value) == pytest.approx(0.0, abs=1e-7)
    assert max(float(g.abs().max()) for g in grads) < 1e-6
    with torch.no_grad():
        model[0].weight.add_(0.1)
    assert float(kl(retain.tensors)) > 1e-4  # a moved model pays


def test_sharpness_aware_term_with_no_gradient_still_backpropagates():
    """Every forget row already in its bin: the forget term and its gradient are 0. The sharpness-aware
    wrapper spent the term's graph on its own gradient; what it returns must still take the caller's
    backward (with zero gradients), next to a retain term that has some."""
    import torch
    from torch import nn

    from dist_unlearn.cost import CostCounter
    from dist_unlearn.methods.match_unseen import sharpness_aware

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    flat = sharpness_aware(model, lambda b: 0.0 * model(b[0]).sum(), 0.05, CostCounter())
    value = flat((x,)) + model(x).pow(2).mean()
    value.backward()
    expected = [torch.autograd.grad(model(x).pow(2).mean(), p)[0] for p in model.parameters()]
    for p, g in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, g)
