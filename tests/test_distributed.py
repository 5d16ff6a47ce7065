"""Distributed engine vs the single-process oracle: 2 CPU Ray workers (gloo), DeepSpeed ZeRO 0 / 2 / 3.

Reference: :class:`dist_unlearn.curvature.LocalOracle` on the same model, data and seed (exact double-backward
HVP), and :class:`dist_unlearn.linalg.TensorSpace` for the vector operations.
"""

from __future__ import annotations

import copy
import sys

import cloudpickle
import pytest
import torch
from torch.utils.data import TensorDataset

from dist_unlearn.curvature import LocalOracle
from dist_unlearn.errors import DistributedError
from dist_unlearn.linalg import TensorSpace

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

# The loss function below is shipped to the workers by value (they cannot import this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def make_problem(hidden: int = 7, rows: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(rows, 5)
    y = torch.randint(0, 3, (rows,))
    model = torch.nn.Sequential(torch.nn.Linear(5, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))
    return model, TensorDataset(x, y)


def flat(v) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in v])


def rel(a, b) -> float:
    a, b = flat(a), flat(b)
    return float((a - b).norm() / b.norm())


def start(stage: int, hvp: str, hidden: int = 7, batch_size: int | None = 8):
    from dist_unlearn.distributed import build_group

    model, data = make_problem(hidden)
    group, oracle = build_group(2, model, loss_fn, data, zero_stage=stage, hvp=hvp, batch_size=batch_size)
    return model, data, group, oracle


def check_space_ops(space, ref_vectors, handles) -> None:
    """ShardedSpace ops against TensorSpace on the same vectors."""
    ts = TensorSpace()
    (a, b), (ha, hb) = ref_vectors, handles
    assert space.dot(ha, hb) == pytest.approx(ts.dot(a, b), rel=1e-6)
    assert space.norm(ha) == pytest.approx(ts.norm(a), rel=1e-6)
    assert space.dots(ha, [ha, hb]) == pytest.approx([ts.dot(a, a), ts.dot(a, b)], rel=1e-6)
    hc = space.copy(ha)
    space.axpy(-0.5, hb, hc)
    space.scale(3.0, hc)
    c = ts.scale(3.0, ts.axpy(-0.5, b, ts.copy(a)))
    assert rel(space.gather(hc), c) < 1e-6
    hl = space.lincomb([2.0, -1.0, 0.25], [ha, hb, hc])
    lin = tuple(2.0 * x - y + 0.25 * z for x, y, z in zip(a, b, c, strict=True))
    assert rel(space.gather(hl), lin) < 1e-6
    z = space.zeros_like(ha)
    assert space.norm(z) == 0.0 and space.is_finite(z)
    space.axpy(float("nan"), ha, z)
    assert not space.is_finite(z)
    before = space.group.execute_all("num_vectors")
    for h in (hc, hl, z):
        space.release(h)
    assert [n - 3 for n in before] == space.group.execute_all("num_vectors")


def test_zero3_gradient_fd_hvp_and_space_ops_match_local(ray_local):
    """The default-run equivalence test: ZeRO-3 (true parameter sharding), 2 workers, FD HVP on shards."""
    model, data, group, oracle = start(3, "fd")
    try:
        ref = LocalOracle(copy.deepcopy(model), loss_fn, data, hvp="exact")
        loss_ref, g_ref = ref.loss_and_gradient()
        loss, g = oracle.loss_and_gradient()
        assert loss == pytest.approx(loss_ref, rel=1e-6)
        assert rel(oracle.space.gather(g), g_ref) < 1e-5
        torch.manual_seed(1)
        v = tuple(torch.randn_like(t) for t in g_ref)
        hv = oracle.hvp(oracle.space.scatter(v))
        # central FD in float32: measured ~2e-5 relative on this model
        assert rel(oracle.space.gather(hv), ref.hvp(v)) < 1e-3
        w = tuple(torch.randn_like(t) for t in g_ref)
        check_space_ops(oracle.space, (v, w), (oracle.space.scatter(v), oracle.space.scatter(w)))
        # apply_update / snapshot / restore move the sharded weights like local ones
        snap = oracle.snapshot()
        oracle.apply_update(oracle.space.scatter(v), scale=0.01)
        ref.apply_update(v, scale=0.01)
        assert oracle.loss() == pytest.approx(ref.loss(), rel=1e-6)
        oracle.restore(snap)
        assert oracle.loss() == pytest.approx(loss_ref, rel=1e-6)
    finally:
        group.shutdown()


def test_zero0_zero2_exact_hvp_and_bytes_independent_of_model_size(ray_local):
    """Exact gradient/HVP within 1e-5 for ZeRO 0 and 2; FD within its error; coordinator bytes per Lanczos
    iteration identical for a 66- and a 12k-parameter model."""
    from dist_unlearn.solvers import lanczos

    per_iter = {}
    for stage, hidden in ((0, 7), (2, 1000)):
        model, data, group, oracle = start(stage, "exact", hidden=hidden)
        try:
            ref = LocalOracle(copy.deepcopy(model), loss_fn, data, hvp="exact")
            _, g_ref = ref.loss_and_gradient()
            _, g = oracle.loss_and_gradient()
            assert rel(oracle.space.gather(g), g_ref) < 1e-5
            torch.manual_seed(2)
            v = tuple(torch.randn_like(t) for t in g_ref)
            hv_ref = ref.hvp(v)
            assert rel(oracle.space.gather(oracle.hvp(oracle.space.scatter(v))), hv_ref) < 1e-5
            b0 = group.bytes_received
            k = 6
            res = lanczos(oracle.hvp, g, k, space=oracle.space, tol=1e-30)
            assert res.iterations == k
            per_iter[hidden] = (group.bytes_received - b0) / k
            ref_res = lanczos(ref.hvp, g_ref, k, tol=1e-30)
            assert res.alphas == pytest.approx(ref_res.alphas, rel=1e-4)
        finally:
            group.shutdown()
    assert per_iter[7] == per_iter[1000]
    assert per_iter[7] < 10_000  # scalars only; one float32 vector of the big model alone is ~48 kB


def _run(stage: int, max_steps: int = 1, output_dir=None, **kw):
    from dist_unlearn.distributed import run_distributed
    from dist_unlearn.options import UnlearnOptions

    model, data = make_problem()
    opts = UnlearnOptions(workers=2, zero_stage=stage, max_steps=max_steps, batch_size=8, **kw)
    res = run_distributed(
        copy.deepcopy(model), loss_fn, data, None, "cure_newton", opts, output_dir=output_dir
    )
    return model, data, res


def _local_step(model, data, max_steps: int = 1, **kw):
    from dist_unlearn.methods import run_curvature_method
    from dist_unlearn.options import UnlearnOptions

    m = copy.deepcopy(model)
    oracle = LocalOracle(m, loss_fn, data, hvp="exact", batch_size=8)
    run_curvature_method("cure_newton", oracle, UnlearnOptions(max_steps=max_steps, batch_size=8, **kw))
    return m


def _delta(m, m0):
    return tuple(p.detach() - q.detach() for p, q in zip(m.parameters(), m0.parameters(), strict=True))


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_cure_newton_step_matches_local(ray_local, stage, tmp_path):
    from safetensors.torch import load_file

    model, data, res = _run(stage, output_dir=tmp_path / "out")
    local = _local_step(model, data)
    assert rel(_delta(res.model, model), _delta(local, model)) < 1e-3
    # the consolidated weights saved by rank 0 are the returned model's
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    for k, v in res.model.state_dict().items():
        assert torch.equal(saved[k], v)
    assert res.stats["hvp_mode"] == ("fd" if stage == 3 else "exact")
    assert res.stats["coordinator_bytes_per_lanczos_iteration"] < 10_000
    assert set(res.stats["time_breakdown"]) >= {"compute_s", "allreduce_s", "coordinator_s"}


def test_killed_worker_restarts_and_matches_undisturbed_run(ray_local, monkeypatch):
    import dist_unlearn

    model, data = make_problem()
    # the undisturbed run goes through the public API (workers=2 -> run_distributed)
    clean = dist_unlearn.unlearn(
        copy.deepcopy(model), loss_fn, data, method="cure_newton", workers=2, max_steps=2, batch_size=8, M=1.0
    )
    assert clean.stats["workers"] == 2 and clean.stats["restarts"] == 0
    assert len(clean.steps) == 2
    kill_at = clean.steps[0].hvps + 2  # inside the second step's Lanczos loop
    monkeypatch.setenv("DIST_UNLEARN_TEST_KILL", f"hvps={kill_at}")
    _, _, hurt = _run(0, max_steps=2, M=1.0)
    assert hurt.stats["restarts"] == 1
    # resumed from the step-1 checkpoint, not from scratch: only the killed step's few HVPs are redone
    assert hurt.stats["total_hvps"] <= clean.stats["total_hvps"] + 3 < clean.stats["total_hvps"] + kill_at
    assert rel(_delta(hurt.model, model), _delta(clean.model, model)) < 1e-6
    assert [s.step for s in hurt.steps] == [s.step for s in clean.steps]


def test_restarts_exhausted_raise_and_write_nothing(ray_local, monkeypatch, tmp_path):
    from dist_unlearn.distributed import run_distributed
    from dist_unlearn.options import UnlearnOptions

    monkeypatch.setenv("DIST_UNLEARN_TEST_KILL", "hvps=1,always")
    model, data = make_problem()
    out = tmp_path / "model_out"
    opts = UnlearnOptions(workers=2, max_steps=1, max_restarts=1, M=1.0)
    with pytest.raises(DistributedError, match="max_restarts=1"):
        run_distributed(model, loss_fn, data, None, "cure_newton", opts, output_dir=out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_ds_config_and_hvp_mode_validation(tmp_path):
    """No Ray: the DeepSpeed config the workers get, and the HVP choice per ZeRO stage."""
    from dist_unlearn.distributed.dsconfig import hvp_mode, make_ds_config
    from dist_unlearn.errors import ConfigError

    cfg = make_ds_config(3, {"zero_optimization": {"stage3_param_persistence_threshold": 100}})
    assert cfg["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}}')
    assert make_ds_config(0, str(path))["zero_optimization"]["stage"] == 2  # the file's stage is used
    with pytest.raises(ConfigError, match="zero_stage=3 but deepspeed_config"):
        make_ds_config(3, str(path))
    with pytest.raises(ConfigError, match="not a readable JSON"):
        make_ds_config(0, str(tmp_path / "missing.json"))
    assert hvp_mode("exact", 2) == "exact"
    assert hvp_mode("exact", 3) == "fd"  # parameters are released under ZeRO-3: no double backward
    with pytest.raises(ConfigError, match="ggn"):
        hvp_mode("ggn", 0)
