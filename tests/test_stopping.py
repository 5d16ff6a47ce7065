"""The forgetting stop rule (dist_unlearn.stopping) in the outer loop, on a tiny memorised model.

The model memorises random labels (train loss ~0), so its forget rows are recognisable (AUC 1 against
unseen rows with the same distribution); a forgetting objective moves them. The reference for the AUC is
an independent recomputation from the model's per-example losses.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.eval.mia import loss_mia_auc
from dist_unlearn.stopping import ForgetStopRule


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def memorised_problem(seed: int = 0, n_retain: int = 40, n_forget: int = 8, n_cal: int = 16):
    """An MLP that memorised random labels on retain + forget; calibration rows are never trained on."""
    g = torch.Generator().manual_seed(seed)
    n = n_retain + n_forget + n_cal
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    train = slice(0, n_retain + n_forget)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(400):
        opt.zero_grad()
        loss_fn(model, (x[train], y[train])).backward()
        opt.step()
    retain = TensorDataset(x[:n_retain], y[:n_retain])
    forget = TensorDataset(x[n_retain : n_retain + n_forget], y[n_retain : n_retain + n_forget])
    cal = TensorDataset(x[n_retain + n_forget :], y[n_retain + n_forget :])
    return model, retain, forget, cal


@torch.no_grad()
def losses(model, data: TensorDataset) -> np.ndarray:
    x, y = data.tensors
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none").double().numpy()


def test_decisions_and_band_validation():
    rule = ForgetStopRule(lambda: (np.zeros(1), np.zeros(1)), band=0.1)
    assert [rule.decide(a) for a in (1.0, 0.61, 0.6, 0.5, 0.4, 0.39, 0.0)] == [
        "continue", "continue", "stop", "stop", "stop", "overshoot", "overshoot"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="stop_auc_band"):
        ForgetStopRule(lambda: None, band=0.5)
    bad = ForgetStopRule(lambda: (np.array([np.nan]), np.zeros(2)))
    from dist_unlearn.errors import NumericalError

    with pytest.raises(NumericalError, match="non-finite"):
        bad.check(0)


def test_memorised_model_stops_forgotten_with_auc_in_band():
    import dist_unlearn

    model, retain, forget, cal = memorised_problem()
    assert loss_mia_auc(losses(model, forget), losses(model, cal)) > 0.9  # memorised: recognisable
    res = dist_unlearn.unlearn(
        model, loss_fn, retain, forget, method="cure_newton", objective="npo", calibration=cal, batch_size=16
    )
    st = res.stats
    assert st["stop_reason"] == "forgotten"
    auc = loss_mia_auc(losses(res.model, forget), losses(res.model, cal))  # recomputed independently
    assert abs(auc - 0.5) <= 0.1
    checks = st["stop_checks"]
    assert checks[0]["step"] == -1 and checks[0]["decision"] == "continue"
    assert checks[-1]["decision"] == "stop" and checks[-1]["auc"] == pytest.approx(auc, abs=1e-6)
    judged = [s for s in res.steps if s.forget_auc is not None]
    assert judged and all(s.stop_decision in ("continue", "stop", "overshoot") for s in judged)
    assert all(not s.accepted for s in res.steps if s.stop_decision == "overshoot")
    # every check is a forward pass over forget + calibration rows, counted as loss work
    rule_rows = len(checks) * (len(forget) + len(cal))
    assert st["cost"]["by_kind"]["loss"]["examples"] >= rule_rows
    assert st["stop_rule"]["band"] == 0.1


def losses_with_auc(auc: float) -> tuple[np.ndarray, np.ndarray]:
    """10 forget and 10 calibration losses whose loss-attack AUC is ``auc`` (rounded to 1/100)."""
    k = round(auc * 100)  # pairs (forget i, calibration j) with l_f < l_c
    cal = np.arange(10, dtype=float) * 10.0
    f = np.full(10, 1000.0)  # wins no pair
    f[: k // 10] = -1.0  # wins all 10
    if k % 10:
        f[k // 10] = cal[10 - k % 10] - 0.5  # wins against the k % 10 largest calibration losses
    return f, cal


class Scripted:
    """A stop-rule evaluator whose AUCs follow a script."""

    def __init__(self, aucs):
        self.aucs, self.calls = list(aucs), 0

    def __call__(self):
        auc = self.aucs[min(self.calls, len(self.aucs) - 1)]
        self.calls += 1
        return losses_with_auc(auc)


def test_overshoot_is_rejected_and_resolved_on_the_stored_krylov_space():
    """An overshoot refuses the step like ARC: weights restored, M x arc_grow from the step's M, the same
    Krylov space re-solved (no HVP), a shorter step; the next in-band check stops the run."""
    from dist_unlearn.curvature.objective import build_oracle
    from dist_unlearn.methods import OuterLoopState, run_curvature_method
    from dist_unlearn.options import UnlearnOptions

    model, retain, forget, _ = memorised_problem()
    m0 = copy.deepcopy(model)
    oracle = build_oracle(model, loss_fn, retain, forget, objective="npo", batch_size=16)
    script = Scripted([1.0, 0.05, 0.55])
    assert loss_mia_auc(*losses_with_auc(0.05)) == pytest.approx(0.05)
    oracle.stop_rule = ForgetStopRule(script, band=0.1)
    state = OuterLoopState()
    run_curvature_method("cure_newton", oracle, UnlearnOptions(max_steps=5), state=state)
    first, second = state.history[0], state.history[1]
    assert (first.accepted, first.stop_decision) == (False, "overshoot")
    assert first.forget_auc == pytest.approx(0.05)
    assert second.loss == first.loss  # restored: the same point
    assert second.hvps == 0  # re-solved on the stored Krylov space
    assert second.M == pytest.approx(first.M * 4.0)
    assert second.step_norm < first.step_norm
    assert (second.accepted, second.stop_decision) == (True, "stop")
    assert state.stop_reason == "forgotten" and state.accepted == 1
    pairs = zip(model.parameters(), m0.parameters(), strict=True)
    moved = sum(float((p - q).detach().pow(2).sum()) for p, q in pairs)
    assert moved > 0


def test_already_indistinguishable_forget_set_is_left_alone():
    import dist_unlearn

    model, retain, forget, cal = memorised_problem()
    w0 = [p.detach().clone() for p in model.parameters()]
    # calibration = the forget rows themselves: AUC exactly 0.5 before any step
    res = dist_unlearn.unlearn(model, loss_fn, retain, forget, objective="npo", calibration=forget)
    assert res.stats["stop_reason"] == "forgotten" and res.stats["accepted_steps"] == 0
    assert res.stats["stop_checks"][0]["auc"] == pytest.approx(0.5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0, strict=True))


def test_empty_calibration_is_a_data_error():
    import dist_unlearn

    model, retain, forget, cal = memorised_problem()
    empty = TensorDataset(cal.tensors[0][:0], cal.tensors[1][:0])
    with pytest.raises(DataError, match="calibration"):
        dist_unlearn.unlearn(model, loss_fn, retain, forget, objective="npo", calibration=empty)
