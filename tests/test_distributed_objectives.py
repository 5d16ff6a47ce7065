"""Forgetting objectives on the Ray engine: grad_diff, npo, influence, hvp_sample, stop rule.

Reference: the in-process run (``run_curvature_method`` on
:func:`dist_unlearn.curvature.objective.build_oracle`) with the same options, seed and HVP kind (exact vs
exact under ZeRO-0, FD vs FD with the same step under ZeRO-3), 2 CPU Ray workers (gloo).
"""

from __future__ import annotations

import copy
import sys

import cloudpickle
import pytest
import torch
from torch.utils.data import TensorDataset

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def make_problem(hidden: int = 16, rows: int = 40, forget_rows: int = 11, seed: int = 0):
    """A small MLP fitted a little on retain + forget; the forget rows have their own labels."""
    torch.manual_seed(seed)
    x = torch.randn(rows + forget_rows, 5)
    y = torch.randint(0, 3, (rows + forget_rows,))
    model = torch.nn.Sequential(torch.nn.Linear(5, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        loss_fn(model, (x, y)).backward()
        opt.step()
    retain = TensorDataset(x[:rows], y[:rows])
    forget = TensorDataset(x[rows:], y[rows:])
    return model, retain, forget


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def rel_update(a, b, m0) -> float:
    d_a, d_b = flat(a.parameters()) - flat(m0.parameters()), flat(b.parameters()) - flat(m0.parameters())
    return float((d_a - d_b).norm() / d_b.norm())


def _in_process(model, retain, forget, opts: dict):
    from dist_unlearn.curvature.objective import build_oracle
    from dist_unlearn.methods import OuterLoopState, run_curvature_method
    from dist_unlearn.options import UnlearnOptions

    local = copy.deepcopy(model)
    o = UnlearnOptions(**opts)
    oracle = build_oracle(
        local,
        loss_fn,
        retain,
        forget,
        objective=o.objective,
        gradient=o.gradient,
        forget_weight=o.forget_weight,
        beta=o.beta,
        hvp=o.hvp,
        batch_size=o.batch_size,
    )
    state = OuterLoopState(seed=0)
    run_curvature_method("cure_newton", oracle, o, state=state)
    return local, state, oracle


@pytest.mark.parametrize(
    "objective,stage",
    [
        ("grad_diff", 0),
        pytest.param("grad_diff", 3, marks=pytest.mark.slow),
        pytest.param("npo", 0, marks=pytest.mark.slow),
        ("npo", 3),
    ],
)
def test_forgetting_objective_three_steps_match_in_process(ray_local, objective, stage):
    from dist_unlearn.distributed import run_distributed
    from dist_unlearn.options import UnlearnOptions

    model, retain, forget = make_problem()
    hvp = "fd" if stage == 3 else "exact"
    opts = {"max_steps": 3, "batch_size": 8, "hvp": hvp, "objective": objective, "forget_weight": 0.3}
    res = run_distributed(
        copy.deepcopy(model),
        loss_fn,
        retain,
        forget,
        "cure_newton",
        UnlearnOptions(workers=2, zero_stage=stage, **opts),
    )
    local, state, oracle = _in_process(model, retain, forget, opts)
    assert sum(s.accepted for s in state.history) == 3
    diff = rel_update(res.model, local, model)
    print(f"{objective} ZeRO-{stage}: relative difference of the updates {diff:.2e}")
    assert diff <= 1e-3
    assert [s.accepted for s in res.steps] == [s.accepted for s in state.history]
    # the forget term moved the forget loss up
    with torch.no_grad():
        f_before = float(loss_fn(model, forget.tensors))
        f_after = float(loss_fn(res.model, forget.tensors))
    assert f_after > f_before
    # cost counted on the workers like in-process: the forget rows are part of every gradient / HVP
    dist_cost, local_cost = res.stats["cost"]["by_kind"], oracle.cost.as_dict()["by_kind"]
    for kind in ("gradient", f"hvp_{hvp}"):
        assert dist_cost[kind]["examples"] == pytest.approx(local_cost[kind]["examples"])
    if objective == "npo":  # the reference forward over the forget set
        assert dist_cost["loss"]["examples"] >= len(forget)
    assert res.stats["objective"] == objective
    assert res.stats["final_loss"] == pytest.approx(float(loss_fn(res.model, retain.tensors)), rel=1e-5)


@pytest.mark.slow
def test_influence_gradient_and_hvp_sample_match_in_process(ray_local):
    """gradient="influence" (first gradient from the forget set) and a fixed HVP sample (hvp_sample=24 of 40
    retain rows, drawn as in-process) on 2 workers, ZeRO-0 exact: 2 steps agree with the public in-process
    API to 1e-3."""
    import dist_unlearn

    model, retain, forget = make_problem()
    opts = {"max_steps": 2, "batch_size": 8, "gradient": "influence", "hvp_sample": 24, "M": 1.0}
    dist = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, workers=2, **opts)
    local = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, **opts)
    assert dist.stats["workers"] == 2
    assert rel_update(dist.model, local.model, model) <= 1e-3
    # the first gradient came from the forget rows: one gradient pass over them, none over retain first
    dk, lk = dist.stats["cost"]["by_kind"], local.stats["cost"]["by_kind"]
    assert dk["gradient"]["examples"] == pytest.approx(lk["gradient"]["examples"])
    assert dk["hvp_exact"]["examples"] == pytest.approx(lk["hvp_exact"]["examples"])
    assert dk["hvp_exact"]["examples"] == 24 * dist.stats["total_hvps"]


@pytest.mark.slow
def test_stop_rule_on_workers_matches_in_process(ray_local):
    """The forgetting stop rule on 2 workers (ZeRO-3): the workers' per-example losses give the same AUC
    sequence and decisions as in-process, and the run stops "forgotten" with the AUC in the band."""
    import dist_unlearn
    from tests.test_stopping import losses, memorised_problem

    # 9 forget rows: ranks hold 5 and 4, so the per-example passes run padded chunks under ZeRO-3
    model, retain, forget, cal = memorised_problem(n_forget=9)
    opts = {"objective": "npo", "calibration": cal, "batch_size": 16, "max_steps": 6}
    dist = dist_unlearn.unlearn(
        copy.deepcopy(model), loss_fn, retain, forget, workers=2, zero_stage=3, **opts
    )  # FD HVPs (ZeRO-3)
    local = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, **opts)  # exact HVPs
    dc, lc = dist.stats["stop_checks"], local.stats["stop_checks"]
    assert [c["decision"] for c in dc] == [c["decision"] for c in lc]
    assert [c["auc"] for c in dc] == pytest.approx([c["auc"] for c in lc], abs=0.02)
    assert dist.stats["stop_reason"] == local.stats["stop_reason"] == "forgotten"
    from dist_unlearn.eval.mia import loss_mia_auc

    auc = loss_mia_auc(losses(dist.model, forget), losses(dist.model, cal))
    assert auc == pytest.approx(dc[-1]["auc"], abs=1e-6) and abs(auc - 0.5) <= 0.1
    # each check: a forward over forget + calibration rows on the workers, counted as loss work
    assert dist.stats["cost"]["by_kind"]["loss"]["examples"] >= len(dc) * (len(forget) + len(cal))


@pytest.mark.parametrize("stage", [0, pytest.param(3, marks=pytest.mark.slow)])
def test_match_unseen_on_workers_matches_in_process(ray_local, stage):
    """The match_unseen objective with the per-subject stop rule on 2 workers: the driver derives the bins
    from the workers' per-example losses and sends them to the ranks; the updates, the stop rule's
    per-subject decisions and the bins agree with the in-process run (ZeRO-0: exact vs exact; ZeRO-3: FD
    HVPs against exact in-process, padded chunks: 9 forget rows on 2 ranks)."""
    import dist_unlearn
    from tests.test_stopping import memorised_problem

    model, retain, forget, cal = memorised_problem(n_forget=9)
    subjects = ["ann"] * 5 + ["bob"] * 4
    opts = {"calibration": cal, "forget_subjects": subjects, "batch_size": 16, "max_steps": 3}
    if stage == 3:  # steps on a kept curvature basis cost a gradient: more of them, less work than 12 fresh
        opts.update(hvp="fd", max_steps=30)
    dist = dist_unlearn.unlearn(
        copy.deepcopy(model), loss_fn, retain, forget, workers=2, zero_stage=stage, **opts
    )
    local = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, **opts)
    assert dist.stats["objective"] == local.stats["objective"] == "match_unseen"
    dc, lc = dist.stats["stop_checks"], local.stats["stop_checks"]
    # the weights as given: the same losses (the bins come from them)
    assert (dc[0]["forget_loss"], dc[0]["calibration_loss"]) == pytest.approx(
        (lc[0]["forget_loss"], lc[0]["calibration_loss"])
    )
    assert dc[0]["subjects"] == lc[0]["subjects"]
    if stage == 0:  # exact HVPs on both sides: the same path
        assert [c["decision"] for c in dc] == [c["decision"] for c in lc]
        for a, b in zip(dc, lc, strict=True):
            qa, qb = ([s["quantile"] for s in c["subjects"]] for c in (a, b))
            assert qa == pytest.approx(qb, abs=0.02)
        assert [s.accepted for s in dist.steps] == [s.accepted for s in local.steps]
        diff = rel_update(dist.model, local.model, model)
        print(f"match_unseen ZeRO-0: relative difference of the updates {diff:.2e}")
        assert diff <= 1e-3
    else:  # FD curvature on the workers, exact in-process: ARC may take other steps, the same end
        assert dist.stats["stop_reason"] == local.stats["stop_reason"] == "forgotten"
        assert {s["status"] for s in dc[-1]["subjects"]} == {"forgotten"}
    assert dist.stats["forgetting"]["criterion"] == "per_subject"
    assert dist.stats["time_breakdown"]["posted_calls_by_call"]["set_forget_bins"] >= 1
