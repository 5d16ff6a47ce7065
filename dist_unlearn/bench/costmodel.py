"""Cost model of one CureNewton outer step on N GPUs, fed by the scale-out benchmark's measurements.

One outer step = one gradient of the retain loss, one trial loss (the ARC acceptance test), k Lanczos
iterations (one Hessian-vector product each, plus the vector operations and scalar all-reduces of Lanczos
with full reorthogonalisation), and the update d = Q y. With N ranks (data parallel, ZeRO stage s):

    T(N) = t_grad + t_loss + k * (t_hvp + t_vec + t_scalar + t_coord) + t_update

(without a stored Krylov basis, ``store_basis=False``, d = Q y takes a second Lanczos pass: 2 k iterations).

Compute (dense transformer, FLOPs per token = 2P forward + 4P backward):
    t_grad_compute = 6 P T_g / (N F u)          F: peak FLOP/s per GPU, u: achieved fraction (MFU)
    t_hvp_compute  = r * 6 P T_h / (N F u)      r = HVP / gradient time ratio (H100, GPT-2 124M: FD 2.23,
                                                exact 7.3 with eager attention vs a flash-attention gradient)
    t_loss_compute = 2 P T_g / (N F u)
Communication (ring collectives, bandwidth B(N) of the slowest link on the ring, per-step latency alpha):
    all-reduce(b)      = 2 (N-1) alpha + 2 (N-1)/N * b / B(N)
    all-gather(b), reduce-scatter(b) = (N-1) alpha + (N-1)/N * b / B(N)
    scalar all-reduce  = 2 ceil(log2 N) alpha   (NCCL's tree algorithm for tiny messages)
    per gradient pass: stages 0-2: all-reduce(P g) (the engine differentiates the replicated module and
        all-reduces the full gradient, then keeps its shard); stage 3: 2 all-gathers of the bf16 weights
        (forward, backward) + reduce-scatter(P g) inside DeepSpeed, issued per layer (3 L collectives, each
        paying its latency term); with ZeRO++ hpZ (``hpz=True``) the weight all-gathers run inside one node
        (NVLink) from a secondary per-node weight partition.
    an FD HVP is two gradient passes; an exact HVP (stages 0-2) all-gathers v and all-reduces H v.
    stages 0-2 all-gather the update d before adding it to the replicated weights (once per outer step).
Coordinator (the Ray driver): every solver operation is one round trip to all N actors,
    t_coord = calls_per_iteration * (c0 + c1 N)      c0: no-op round trip, c1: task submission per actor
    (both measured by the benchmark on calls that do no work).
Local vector work: Lanczos iteration j reads/writes ~2 j + 6 shard-sized vectors (reorthogonalisation dots and
axpys), k (k + 7) in all, plus k + 1 for d = Q y, each P/N * 4 bytes of HBM traffic.

Assumptions (the defaults of :class:`Hardware` and :class:`Workload`, all overridable): H100 SXM, bf16 peak
989 TFLOP/s at 40 % MFU, 8 GPUs per node on NVSwitch (360 GB/s achievable bus bandwidth), 400 Gb/s per GPU
between nodes (45 GB/s achievable), 5 us per ring step; no overlap of communication with compute
(conservative); activations checkpointed (a fixed 8 GB per GPU); fp32 Krylov vectors and master weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dist_unlearn.errors import ConfigError


@dataclass(frozen=True)
class Hardware:
    """One GPU type and its interconnect."""

    name: str = "H100-SXM-80GB"
    peak_flops: float = 989e12
    mfu: float = 0.40
    hbm_bandwidth: float = 3.35e12
    memory_bytes: float = 80e9
    gpus_per_node: int = 8
    intra_node_bandwidth: float = 360e9
    inter_node_bandwidth: float = 45e9
    latency_s: float = 5e-6

    def bandwidth(self, n: int) -> float:
        """Bus bandwidth of a ring over n GPUs: NVLink inside one node, the NIC as soon as it spans nodes."""
        return self.intra_node_bandwidth if n <= self.gpus_per_node else self.inter_node_bandwidth


@dataclass(frozen=True)
class Measured:
    """What the scale-out benchmark measured (defaults: published H100 figures, 2 CPU workers here).

    Attributes:
        hvp_over_grad: time of one HVP over one gradient, per HVP mode.
        coord_s_per_call: driver overhead of one ``execute_all`` round trip, fixed part c0.
        coord_s_per_call_per_worker: part growing with the number of actors, c1.
        calls_per_iteration: driver round trips per Lanczos iteration (HVP, dots, axpys, norm).
        scalar_allreduces_per_iteration: collectives of a few floats per Lanczos iteration.
        coordinator_bytes_per_iteration: bytes the driver receives per Lanczos iteration and per worker.
        source: where the numbers came from.
    """

    hvp_over_grad: dict[str, float] = field(default_factory=lambda: {"fd": 2.23, "exact": 7.3})
    coord_s_per_call: float = 1.0e-3
    coord_s_per_call_per_worker: float = 0.2e-3
    calls_per_iteration: float = 8.0
    scalar_allreduces_per_iteration: float = 3.0
    coordinator_bytes_per_iteration: float = 400.0
    source: str = "defaults"


@dataclass(frozen=True)
class Workload:
    """One unlearning job: model size and the retain tokens of each gradient / HVP sample."""

    params: float
    layers: int
    tokens_grad: float = 2.0**20
    tokens_hvp: float = 2.0**20
    lanczos_iterations: int = 20
    zero_stage: int = 3
    hvp: str = "fd"
    store_basis: bool = True
    hpz: bool = False
    weight_bytes: int = 2
    grad_bytes: int = 4
    vector_bytes: int = 4
    activation_bytes: float = 8e9

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage={self.zero_stage!r} is not a ZeRO stage; allowed: 0, 1, 2, 3.")
        if self.hvp not in ("fd", "exact"):
            raise ConfigError(f"hvp={self.hvp!r} is not modelled; allowed: 'fd', 'exact'.")
        if self.hvp == "exact" and self.zero_stage == 3:
            raise ConfigError("hvp='exact' does not run under ZeRO-3 (released parameters); use hvp='fd'.")
        for name in ("params", "layers", "tokens_grad", "tokens_hvp", "lanczos_iterations"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be positive.")


# ------------------------------------------------------------------------------------------- collectives
def allreduce_time(nbytes: float, n: int, hw: Hardware) -> float:
    """Ring all-reduce: 2 (n-1) alpha + 2 (n-1)/n * bytes / B(n); zero on one GPU."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * hw.latency_s + 2 * (n - 1) / n * nbytes / hw.bandwidth(n)


def allgather_time(nbytes: float, n: int, hw: Hardware, collectives: int = 1) -> float:
    """Ring all-gather (or reduce-scatter) of ``nbytes`` in total, split into ``collectives`` calls."""
    if n <= 1:
        return 0.0
    return collectives * (n - 1) * hw.latency_s + (n - 1) / n * nbytes / hw.bandwidth(n)


def scalar_allreduce_time(n: int, hw: Hardware) -> float:
    """A few floats: latency bound, tree algorithm."""
    return 0.0 if n <= 1 else 2 * math.ceil(math.log2(n)) * hw.latency_s


# ------------------------------------------------------------------------------------------- the model
@dataclass
class StepCost:
    """Seconds per outer step on ``gpus`` GPUs, split by kind, and whether the model fits in memory."""

    gpus: int
    compute_s: float
    comm_s: float
    coordinator_s: float
    vector_s: float
    memory_per_gpu_bytes: float
    fits: bool
    allreduce_bytes_per_iteration: float
    coordinator_bytes_per_iteration: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s + self.coordinator_s + self.vector_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": self.total_s}


class CostModel:
    """Time of one outer step as a function of the number of GPUs (see the module docstring)."""

    def __init__(self, hardware: Hardware | None = None, measured: Measured | None = None) -> None:
        self.hw = hardware or Hardware()
        self.m = measured or Measured()

    def flop_time(self, flops: float, n: int) -> float:
        return flops / (n * self.hw.peak_flops * self.hw.mfu)

    def pass_comm(self, w: Workload, n: int, backward: bool = True) -> float:
        """Communication of one forward(+backward) pass over the data under ZeRO stage ``w.zero_stage``."""
        p, hw = w.params, self.hw
        if w.zero_stage == 3:
            gathers = 2 if backward else 1
            # ZeRO++ hpZ keeps a secondary bf16 weight partition per node: weight all-gathers stay on NVLink.
            g = min(n, hw.gpus_per_node) if w.hpz else n
            t = allgather_time(gathers * p * w.weight_bytes, g, hw, collectives=gathers * w.layers)
            if backward:
                t += allgather_time(p * w.grad_bytes, n, hw, collectives=w.layers)  # reduce-scatter
            return t
        return allreduce_time(p * w.grad_bytes, n, hw) if backward else 0.0

    def hvp_comm(self, w: Workload, n: int) -> float:
        if w.hvp == "fd":
            return 2 * self.pass_comm(w, n)
        gather_v = allgather_time(w.params * w.vector_bytes, n, self.hw)
        return gather_v + allreduce_time(w.params * w.grad_bytes, n, self.hw)

    def memory_per_gpu(self, w: Workload, n: int) -> float:
        """Model states (bf16 weights, fp32 master, fp32 gradient), Krylov vectors, FD backup, activations.

        Stages 0-2 keep the full gradient (the engine differentiates the replicated module); stages 1-2
        partition the fp32 master weights, stage 3 everything.
        """
        p = w.params
        vectors = (w.lanczos_iterations + 4) if w.store_basis else 6
        sharded = vectors * w.vector_bytes * p / n + (4 * p / n if w.hvp == "fd" else 0.0)
        states = (w.weight_bytes + 4) * p + w.grad_bytes * p  # replicated under ZeRO-0
        if w.zero_stage in (1, 2):
            states = w.weight_bytes * p + 4 * p / n + w.grad_bytes * p
        elif w.zero_stage == 3:
            states = (w.weight_bytes + 4 + w.grad_bytes) * p / n
            if w.hpz:
                states += w.weight_bytes * p / min(n, self.hw.gpus_per_node)
        return states + sharded + w.activation_bytes

    def step(self, w: Workload, n: int) -> StepCost:
        """Cost of one outer step of ``w`` on ``n`` GPUs."""
        if n < 1:
            raise ConfigError(f"gpus={n!r} must be >= 1.")
        k = w.lanczos_iterations
        r = self.m.hvp_over_grad[w.hvp]
        grad = self.flop_time(6 * w.params * w.tokens_grad, n)
        loss = self.flop_time(2 * w.params * w.tokens_grad, n)
        hvp = r * self.flop_time(6 * w.params * w.tokens_hvp, n)
        hvps = k if w.store_basis else 2 * k  # without a stored basis, d = Q y needs a second Lanczos pass
        compute = grad + loss + hvps * hvp
        comm = self.pass_comm(w, n) + self.pass_comm(w, n, backward=False) + hvps * self.hvp_comm(w, n)
        comm += hvps * self.m.scalar_allreduces_per_iteration * scalar_allreduce_time(n, self.hw)
        if w.zero_stage != 3:  # the update's shards are all-gathered into the replicated weights
            comm += allgather_time(w.params * w.vector_bytes, n, self.hw)
        per_call = self.m.coord_s_per_call + self.m.coord_s_per_call_per_worker * n
        coordinator = hvps * self.m.calls_per_iteration * per_call
        shard_bytes = w.params / n * w.vector_bytes
        vector = (k * (k + 7) + k + 1) * shard_bytes / self.hw.hbm_bandwidth  # Lanczos ops + d = Q y
        mem = self.memory_per_gpu(w, n)
        scalars = self.m.scalar_allreduces_per_iteration * 8
        iter_bytes = (self.hvp_comm_bytes(w, n) + scalars) if n > 1 else 0.0
        return StepCost(
            gpus=n,
            compute_s=compute,
            comm_s=comm,
            coordinator_s=coordinator,
            vector_s=vector,
            memory_per_gpu_bytes=mem,
            fits=mem <= self.hw.memory_bytes,
            allreduce_bytes_per_iteration=iter_bytes,
            coordinator_bytes_per_iteration=self.m.coordinator_bytes_per_iteration * n,
        )

    def hvp_comm_bytes(self, w: Workload, n: int) -> float:
        """Bytes each GPU sends per HVP (the bandwidth terms above times B)."""
        f = (n - 1) / n
        if w.hvp == "exact":
            return f * w.params * w.vector_bytes + 2 * f * w.params * w.grad_bytes
        if w.zero_stage == 3:
            g = min(n, self.hw.gpus_per_node) if w.hpz else n
            per_pass = (g - 1) / g * 2 * w.params * w.weight_bytes + f * w.params * w.grad_bytes
        else:
            per_pass = 2 * f * w.params * w.grad_bytes
        return 2 * per_pass

    def scaling(self, w: Workload, gpus: list[int]) -> list[dict[str, Any]]:
        """Steps on each GPU count, with scaling efficiency E(N) = N0 T(N0) / (N T(N)) relative to the
        smallest count N0 at which the model fits in memory (None where it does not fit)."""
        rows = [self.step(w, n) for n in sorted(gpus)]
        base = next((c for c in rows if c.fits), None)
        out = []
        for c in rows:
            d = c.as_dict()
            d["efficiency"] = (base.gpus * base.total_s / (c.gpus * c.total_s)) if (base and c.fits) else None
            d["compute_fraction"] = c.compute_s / c.total_s
            out.append(d)
        return out


# ------------------------------------------------------------------------------------------- projection
MODEL_SIZES: dict[str, tuple[float, int]] = {  # name -> (parameters, transformer layers)
    "1B": (1.2e9, 16),
    "7B": (6.7e9, 32),
    "13B": (13e9, 40),
    "70B": (70e9, 80),
}
GPU_COUNTS = [8, 16, 32, 64, 128, 256, 512, 1024]


def project(
    model: CostModel | None = None,
    *,
    sizes: dict[str, tuple[float, int]] | None = None,
    gpus: list[int] | None = None,
    **workload: Any,
) -> list[dict[str, Any]]:
    """Rows (model, gpus, seconds per outer step, breakdown, efficiency) for every size x GPU count."""
    model = model or CostModel()
    rows = []
    for name, (params, layers) in (sizes or MODEL_SIZES).items():
        w = Workload(params=params, layers=layers, **workload)
        for row in model.scaling(w, gpus or GPU_COUNTS):
            rows.append({"model": name, "params": params, **row})
    return rows


def measured_from_bench(
    bench: dict[str, Any], base: Measured | None = None, *, gpu: dict[str, Any] | None = None
) -> Measured:
    """Take what the benchmarks measured into a :class:`Measured`.

    From the scale-out benchmark (``dist-unlearn bench`` JSON, CPU workers here):
    - coordinator c0 + c1 N: c1 = median driver time to submit one actor's task, c0 = median no-op round
      trip with one worker minus c1 (both from calls that do no work, so CPU contention from the workers'
      compute does not leak in);
    - driver round trips, scalar all-reduces and coordinator bytes per Lanczos iteration (medians; bytes per
      worker).
    From the GPU benchmark (``benchmarks/gpu/gpu_bench.py`` JSON, if given): the HVP / gradient time ratios
    (FD under ZeRO-3, exact under ZeRO-0). Without it the ratios of ``base`` stay (H100 figures of the
    published figures): the CPU benchmark's own ratios describe a tiny CPU model, not transformer GPU kernels.
    """
    import statistics

    base = base or Measured()
    runs = [r for r in bench.get("runs", []) if r.get("ok", True)]
    sources = []
    fields: dict[str, Any] = {}
    if runs:
        submit = [r["noop_submit_s_per_worker"] for r in runs if "noop_submit_s_per_worker" in r]
        trip1 = [r["noop_round_trip_s"] for r in runs if r["workers"] == 1 and "noop_round_trip_s" in r]
        if submit and trip1:
            c1 = statistics.median(submit)
            fields.update(
                coord_s_per_call_per_worker=c1, coord_s_per_call=max(statistics.median(trip1) - c1, 0.0)
            )
        fields.update(
            calls_per_iteration=statistics.median(r["calls_per_iteration"] for r in runs),
            scalar_allreduces_per_iteration=statistics.median(
                r["scalar_allreduces_per_iteration"] for r in runs
            ),
            coordinator_bytes_per_iteration=statistics.median(
                r["coordinator_bytes_per_iteration"] / r["workers"] for r in runs
            ),
        )
        sources.append(f"dist-unlearn bench ({len(runs)} runs, {bench.get('machine', '?')})")
    if gpu:
        ratios = dict(base.hvp_over_grad)
        phases = gpu.get("phases", {})
        if "zero3_fd" in phases:
            ratios["fd"] = phases["zero3_fd"]["fd_over_grad"]
        if "zero0_exact" in phases:
            ratios["exact"] = phases["zero0_exact"]["exact_over_grad"]
        fields["hvp_over_grad"] = ratios
        sources.append(f"gpu_bench ({gpu.get('device', '?')})")
    else:
        sources.append("HVP/gradient ratios: published H100 figures")
    return replace(base, **fields, source="; ".join(sources))
