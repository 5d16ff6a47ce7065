"""Fixed-size retain samples, the kept curvature basis and the influence anchor on the Ray engine (2 CPU
workers): the same rows as in-process for the same seed, the same steps, the same work by role; a worker
restart keeps the anchored objective."""

from __future__ import annotations

import copy
import sys

import cloudpickle
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from test_distributed_objectives import loss_fn, make_problem, rel_update  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def by_role(res) -> dict:
    return {r: e["by_kind"] for r, e in res.stats["cost"]["by_role"].items()}


@pytest.mark.slow
def test_sampled_npo_with_a_kept_basis_matches_in_process(ray_local):  # noqa: F811
    """A forgetting objective on a 24-row retain sample of 40 with curvature reuse: each rank reads its share
    of the rows the in-process run reads; updates, accepted steps, HVPs and the work by role agree."""
    import dist_unlearn

    model, retain, forget = make_problem()
    opts = {"objective": "npo", "forget_weight": 0.3, "retain_sample": 24, "max_steps": 4, "batch_size": 8,
            "krylov_max_iter": 6}  # fmt: skip
    dist = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, workers=2, **opts)
    local = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, **opts)
    assert dist.stats["workers"] == 2
    assert dist.stats["curvature_bases"] == local.stats["curvature_bases"] >= 1
    assert [s.accepted for s in dist.steps] == [s.accepted for s in local.steps]
    assert [s.hvps for s in dist.steps] == [s.hvps for s in local.steps]
    assert rel_update(dist.model, local.model, model) <= 1e-3
    d, lo = by_role(dist), by_role(local)
    assert d["retain"]["gradient"] == lo["retain"]["gradient"] == 24 * dist.stats["total_gradients"]
    assert d["retain"]["hvp_exact"] == lo["retain"]["hvp_exact"] == 24 * dist.stats["total_hvps"]
    assert d["forget"]["gradient"] == lo["forget"]["gradient"] == len(forget) * dist.stats["total_gradients"]


@pytest.mark.slow
def test_a_restart_keeps_the_influence_anchor(ray_local, monkeypatch):  # noqa: F811
    """The retain objective on a sample is anchored at the influence gradient; the anchor's vector is saved
    with the first checkpoint, so a group restarted after a worker death continues the same objective."""
    import dist_unlearn

    model, retain, forget = make_problem()
    opts = {"retain_sample": 24, "max_steps": 3, "batch_size": 8, "M": 1.0, "workers": 2}
    clean = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, **opts)
    assert clean.stats["options"]["gradient"] == "influence"  # chosen: a sample smaller than the retain set
    local = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, **{**opts, "workers": None})
    assert rel_update(clean.model, local.model, model) <= 1e-3
    kill_at = clean.steps[0].hvps + clean.steps[1].hvps + 1  # inside the third step's solve
    monkeypatch.setenv("DIST_UNLEARN_TEST_KILL", f"hvps={kill_at}")
    hurt = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, retain, forget, **opts)
    assert hurt.stats["restarts"] == 1
    assert rel_update(hurt.model, clean.model, model) <= 1e-6
