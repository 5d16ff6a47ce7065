"""launch/ and docker/: `ray job submit` against a real loopback head, the cluster config, the image pins.

The head is started with ``ray start --head --block`` on 127.0.0.1 with its own temp dir, free ports and a
per-test auth token. It is stopped by signalling that ``ray start`` process (Ray then stops the processes of
that node, and only those), never with ``ray stop``, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "launch" / "submit.sh"
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `ray` and `python` of this venv
    env.update(
        DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false"
    )
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _submit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SUBMIT), *args],
        cwd=REPO,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------- fast checks
def test_submit_dry_run_builds_the_ray_job_submit_command():
    r = _submit(
        "--dry-run",
        "--address",
        "http://10.9.8.7:8265",
        "--config",
        "configs/experiments/digits_demo.yaml",
        "--workers",
        "2",
        "--out",
        "runs/x",
        "--env",
        "HF_HOME=/mnt/hf",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("ray job submit ")
    assert "--address http://10.9.8.7:8265" in out
    assert "--working-dir ." in out
    assert out.rstrip().endswith(
        "-- python -m dist_unlearn run --config configs/experiments/digits_demo.yaml --workers 2 --out runs/x"
    )
    assert "HF_HOME" in out and ".venv" in out  # env var and the upload excludes travel in the runtime env


def test_submit_passes_any_subcommand_after_double_dash():
    r = _submit("--dry-run", "--no-wait", "--submission-id", "b1", "--", "bench", "--workers", "1,2")
    assert r.returncode == 0, r.stderr
    assert "--no-wait" in r.stdout and "--submission-id b1" in r.stdout
    assert r.stdout.rstrip().endswith("-- python -m dist_unlearn bench --workers 1,2")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --config FILE"),
        (("--config", "configs/missing.yaml"), "is not a file"),
        (("--bogus",), "unknown option '--bogus'"),
        (("--workers", "0", "--config", "configs/experiments/digits_demo.yaml"), "positive integer"),
        (("--config", "configs/experiments/digits_demo.yaml", "--", "bench"), "give them after --"),
        (("--env", "NOEQUALS", "--config", "configs/experiments/digits_demo.yaml"), "KEY=VALUE"),
    ],
)
def test_submit_usage_errors_exit_2_with_a_message(args, message):
    r = _submit("--dry-run", *args)
    assert r.returncode == 2
    assert message in r.stderr


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    yaml = pytest.importorskip("yaml")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO / "launch" / "cluster.yaml").read_text())
    full = prepare_config(cfg)
    validate_config(full)  # Ray's own JSON schema + consistency checks; raises on error
    assert full["docker"]["image"].endswith(":0.1.0")  # an immutable tag, not :latest
    assert "--gpus all" in full["docker"]["worker_run_options"]
    assert full["available_node_types"][full["head_node_type"]]["resources"]["GPU"] == 0
    assert any("--dashboard-host=0.0.0.0" in c for c in full["head_start_ray_commands"])


def _pins(text: str) -> dict[str, str]:
    return {
        m[0].lower(): m[1]
        for m in re.findall(r"([A-Za-z][A-Za-z0-9_.-]*)(?:\[[a-z,]+\])?==([0-9][^\s\"'\\]*)", text)
    }


def test_docker_pins_agree_with_constraints_makefile_and_pyproject():
    from packaging.requirements import Requirement

    constraints = _pins((REPO / "docker" / "constraints.txt").read_text())
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    tools = {"pip", "setuptools", "wheel", "packaging", "ninja"}  # build tools, pinned in the Dockerfile only
    for name, version in _pins(dockerfile).items():
        if name not in tools:
            assert constraints.get(name) == version, (
                f"Dockerfile pins {name}=={version}, constraints.txt differs"
            )
    for name in ("torch", "deepspeed", "ray", "transformers"):
        assert name in constraints and re.search(rf"\b{name}(\[[a-z,]+\])?==", dockerfile), name
    # torch and deepspeed are pinned by the Makefile for the tested venv: the image must use the same.
    makefile = _pins((REPO / "Makefile").read_text())
    for name in ("torch", "deepspeed"):
        if name in makefile:
            assert constraints[name] == makefile[name], (
                f"{name}: image {constraints[name]}, venv {makefile[name]}"
            )
    # every pin satisfies the package's own requirement range (pyproject.toml)
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        if dep.name.lower() in constraints:
            assert dep.specifier.contains(constraints[dep.name.lower()]), (
                f"{dep} vs {constraints[dep.name.lower()]}"
            )
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**" and "!dist_unlearn/" in ignore and "!pyproject.toml" in ignore


# ---------------------------------------------------------------------------------------- loopback head
def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _our_processes(marker: str) -> list[int]:
    """PIDs whose command line names our head's private temp dir (processes this test started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with the dashboard (job server); yields (address, env); stops only itself."""
    pytest.importorskip("aiohttp", reason="ray job submit needs ray[default] (dashboard + job server)")
    pytest.importorskip("ray.dashboard.modules.job.sdk")
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the `ray` CLI is not installed next to this interpreter")
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's unix sockets live under it
    gcs, dash, client, agent, agent_grpc, rt_env, metrics, node_mgr, obj_mgr = _free_ports(9)
    token = secrets.token_hex(32)
    env = _env(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # single-node mode: Ray keeps 127.0.0.1 as the node address instead of the routable one
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--include-dashboard",
        "true",
        "--num-cpus",
        "2",
        "--temp-dir",
        temp_dir,
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(rt_env),
        "--metrics-export-port",
        str(metrics),
        "--node-manager-port",
        str(node_mgr),
        "--object-manager-port",
        str(obj_mgr),
        "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 - closed in teardown
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}:\n{Path(log.name).read_text()}")
            try:
                req = urllib.request.Request(
                    f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
                )
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the job server did not come up in 180 s:\n{Path(log.name).read_text()}")
            time.sleep(1)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # Ray's handler stops the processes of this node
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _our_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _our_processes(temp_dir)
        for pid in left:  # stragglers of this head only (their command line names its temp dir)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test head outlived its shutdown: {left}"


def test_ray_job_submit_runs_the_cli_on_a_loopback_head(ray_head):
    address, env = ray_head
    r = _submit(
        "--address",
        address,
        "--submission-id",
        f"help-{secrets.token_hex(3)}",
        "--",
        "--help",
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Running entrypoint for job" in out and "python -m dist_unlearn --help" in out
    assert re.search(r"Commands:.*\brun\b.*", out, re.S) and "bench" in out  # the job's own output came back
    assert "succeeded" in out


def test_ray_job_submit_reports_a_failing_job(ray_head):
    address, env = ray_head
    r = _submit(
        "--address", address, "--", "run", "--config", "configs/does-not-exist.yaml", env=env, timeout=300
    )
    assert r.returncode != 0
    assert "failed" in (r.stdout + r.stderr).lower()


def test_ray_job_submit_runs_a_distributed_unlearning_job(ray_head, tmp_path):
    """A real `run --workers 2` job: the driver joins the head's Ray, places 2 rank actors, writes results."""
    yaml = pytest.importorskip("yaml")
    address, env = ray_head
    job_dir = tmp_path / "job"  # the uploaded working dir: just the config (the package is installed)
    job_dir.mkdir()
    out = tmp_path / "out"
    cfg = {
        "name": "launch-tiny",
        "seed": 0,
        "output_dir": str(out),
        "task": {"name": "digits_cnn", "params": {"channels": 2, "hidden": 8, "n_samples": 120}},
        "train": {"epochs": 3, "lr": 0.02, "batch_size": 32},
        "forget": {"fraction": 0.1, "seed": 0},
        "methods": [{"name": "cure_newton", "max_steps": 1}],
        "eval": {"report": False},
        "progress": False,
    }
    (job_dir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    r = _submit(
        "--address",
        address,
        "--working-dir",
        str(job_dir),
        "--config",
        "tiny.yaml",
        "--workers",
        "2",
        env=env,
        timeout=900,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    assert "succeeded" in log and "results:" in log
    results = json.loads((out / "results.json").read_text())

    def engine_stats(node):
        if isinstance(node, dict):
            if "coordinator_bytes_per_lanczos_iteration" in node:
                yield node
            for v in node.values():
                yield from engine_stats(v)
        elif isinstance(node, list):
            for v in node:
                yield from engine_stats(v)

    stats = list(engine_stats(results))
    assert stats, "no distributed-engine stats in results.json: cure_newton did not run on the workers"
    assert stats[0]["workers"] == 2 and stats[0]["method"] == "cure_newton"
    assert 0 < stats[0]["coordinator_bytes_per_lanczos_iteration"] < 10_000  # scalars only, not vectors
