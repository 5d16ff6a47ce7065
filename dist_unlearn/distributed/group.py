"""A gang of Ray actors, one torch.distributed rank each, placed together and called together."""

from __future__ import annotations

import os
import pickle
import time
from typing import Any

from dist_unlearn.errors import DistributedError
from dist_unlearn.quiet import worker_env

WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""glibc settings of the rank processes (the caller's environment wins). By default glibc raises its mmap
threshold to 32 MB after the first large free, so the MB-sized per-parameter temporaries of every gradient
pass then come from the heap and stay resident after they are freed. GPT-2-124M, ZeRO-3, one cure_newton
step (benchmarks/RESULTS.md, "How does the engine scale, and what memory does it need?"): per-rank step
peak 11.6 / 8.1 GB at 1 / 2 workers by default, 10.8 / 6.0 GB with these (ratio 0.69 -> 0.55), step time
not slower."""


class WorkerDiedError(DistributedError):
    """A rank's actor died (killed, OOM, node lost): the group is unusable, a restart may succeed."""


class WorkerGroup:
    """``num_workers`` :class:`~dist_unlearn.distributed.worker.DistWorker` actors in one placement group.

    The driver (this object) is the coordinator: it calls one method on every actor (:meth:`execute_all`) in
    the same order, so collectives inside the workers line up. It counts the bytes it receives and the time it
    waits, for the instrumentation in ``UnlearnResult.stats``.

    Args:
        num_workers: number of ranks (one per GPU, or one per ``cpus_per_worker`` CPU slot).
        use_gpu: one GPU per actor, nccl; otherwise CPU, gloo.
        cpus_per_worker: CPUs reserved per actor (also its torch thread count on CPU).
        placement_strategy: Ray placement strategy ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD").
        start_timeout_s: how long to wait for the placement group before failing.
    """

    def __init__(
        self,
        num_workers: int,
        *,
        use_gpu: bool = False,
        cpus_per_worker: float = 1,
        placement_strategy: str = "PACK",
        start_timeout_s: float = 120.0,
    ) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from dist_unlearn.distributed.worker import DistWorker

        if not isinstance(num_workers, int) or num_workers < 1:
            raise DistributedError(f"num_workers={num_workers!r} must be a positive integer.")
        self.num_workers = num_workers
        self.use_gpu = use_gpu
        self.bytes_received = 0
        self.wait_s = 0.0
        self.calls = 0
        self.calls_by_method: dict[str, int] = {}
        self.model_ref: Any = None  # the pickled model in the object store (set by setup)
        self._pending_release: list[int] = []  # vector ids to free, sent ahead of the next call
        self.posted = 0  # calls sent without waiting (post_all), settled at the next synchronous call
        self.posted_by_method: dict[str, int] = {}
        self._posted: list[tuple[str, list, Any]] = []
        bundle = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        self.pg = placement_group([dict(bundle) for _ in range(num_workers)], strategy=placement_strategy)
        try:
            ray.get(self.pg.ready(), timeout=start_timeout_s)
        except Exception as e:  # GetTimeoutError: the cluster cannot hold the gang
            ray.util.remove_placement_group(self.pg)
            raise DistributedError(
                f"cannot place {num_workers} workers with {bundle} each within {start_timeout_s:.0f} s; "
                f"the Ray cluster has {ray.cluster_resources()}. Lower workers= or add nodes."
            ) from e
        actor_cls = ray.remote(DistWorker)
        env = {"DS_ACCELERATOR": "cuda" if use_gpu else "cpu", "RAY_USAGE_STATS_ENABLED": "0"}
        env.update({k: os.environ.get(k, v) for k, v in WORKER_MALLOC_ENV.items()})
        env.update(worker_env())  # the driver's library switches (dist_unlearn.quiet)
        self.actors = [
            actor_cls.options(
                num_cpus=cpus_per_worker,
                num_gpus=1 if use_gpu else 0,
                max_restarts=0,
                max_task_retries=0,
                runtime_env={"env_vars": env},
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=i
                ),
            ).remote(i, num_workers, use_gpu, max(1, int(cpus_per_worker)))
            for i in range(num_workers)
        ]
        self._alive = True

    def setup(self, spec: dict[str, Any], model_blob: Any, loss_blob: Any, data_blob: Any) -> list[dict]:
        """Gang start: rendezvous + DeepSpeed engines on all ranks, issued concurrently."""
        import ray

        addr, port = self._get([self.actors[0].address.remote()])[0]
        refs = [ray.put(b) if b is not None else None for b in (model_blob, loss_blob, data_blob)]
        self.model_ref = refs[0]  # kept in the object store for save_output (the workers drop their copy)
        return self._get(
            [a.setup.remote(addr, port, spec, *refs) for a in self.actors],
            what="setup (rendezvous / DeepSpeed initialisation)",
        )

    def execute_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method(*args, **kwargs)`` on every rank; return the results in rank order.

        Raises:
            DistributedError: an actor died or raised (the original error is chained).
        """
        self._flush_releases()
        return self._get([getattr(a, method).remote(*args, **kwargs) for a in self.actors], what=method)

    def execute_rank(self, rank: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a local (non-collective) method on one rank."""
        self._flush_releases()
        return self._get([getattr(self.actors[rank], method).remote(*args, **kwargs)], what=method)[0]

    def release_later(self, ids: list[int]) -> None:
        """Free these vector ids on every rank ahead of the next call (one task per rank for all of them).

        A Lanczos solve drops ~k handles at its end; sent one by one they cost k tasks per rank (~0.3 ms of
        driver submission and worker dispatch each), batched they cost one. Ray keeps each actor's tasks in
        submission order, so the release still runs before the next call on that rank.
        """
        self._pending_release.extend(int(i) for i in ids)

    def _flush_releases(self) -> None:
        if self._pending_release and self._alive:
            ids, self._pending_release = self._pending_release, []
            for a in self.actors:
                a.release.remote(ids)

    def post_all(self, method: str, *args: Any, on_done: Any = None) -> None:
        """Call ``method(*args)`` on every rank without waiting for it: for calls whose result the driver does
        not need (vector updates, snapshots, checkpoints). Ray runs each actor's tasks in submission order, so
        the next synchronous call (:meth:`execute_all`) runs after it on every rank; its errors surface there,
        and ``on_done()`` (e.g. committing a checkpoint) runs there once every rank finished it. A posted call
        is not a round trip: the driver never waits for it alone.
        """
        self._flush_releases()
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        self.posted += 1
        self.posted_by_method[method] = self.posted_by_method.get(method, 0) + 1
        self._posted.append((method, refs, on_done))

    def sync(self) -> None:
        """Wait for the posted calls (a round trip only when some are pending)."""
        if self._posted:
            self._get([], what="sync")

    def _settle_posted(self) -> None:
        """Take the results of the posted calls (finished: they ran before the call just answered)."""
        import ray

        posted, self._posted = self._posted, []
        for i, (method, refs, on_done) in enumerate(posted):
            try:
                ray.get(refs)
            except ray.exceptions.RayActorError as e:
                self._alive = False
                raise WorkerDiedError(f"a Ray worker died during {method!r} (posted): {e}") from e
            except ray.exceptions.RayTaskError as e:
                from dist_unlearn.errors import DistUnlearnError

                self._posted = posted[i + 1 :] + self._posted
                cause = getattr(e, "cause", None)
                if isinstance(cause, DistUnlearnError):
                    raise cause from None
                raise DistributedError(f"worker error during {method!r} (posted): {e}") from e
            if on_done is not None:
                on_done()

    def submit_all(self, method: str, *args: Any) -> None:
        """Fire and forget on every rank (releases): ordering per actor is kept by Ray."""
        if self._alive:
            for a in self.actors:
                getattr(a, method).remote(*args)

    def _get(self, refs: list, what: str = "call") -> list[Any]:
        """Wait for all refs, failing fast: a dead peer leaves the others blocked in a collective."""
        import ray

        t0 = time.perf_counter()
        self.calls += 1
        self.calls_by_method[what] = self.calls_by_method.get(what, 0) + 1
        pending = [r for _, rs, _ in self._posted for r in rs] + list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready[0])  # raises now if that rank failed
            results = ray.get(list(refs))
        except ray.exceptions.RayActorError as e:
            self._alive = False
            raise WorkerDiedError(f"a Ray worker died during {what!r}: {e}") from e
        except ray.exceptions.RayTaskError as e:
            from dist_unlearn.errors import DistUnlearnError

            cause = getattr(e, "cause", None)
            if isinstance(cause, DistUnlearnError):
                raise cause from None
            if self._peer_died(pending):  # e.g. gloo "connection closed" after a peer was killed
                self._alive = False
                raise WorkerDiedError(f"a Ray worker died during {what!r}; a peer then failed: {e}") from e
            raise DistributedError(f"worker error during {what!r}: {e}") from e
        finally:
            self.wait_s += time.perf_counter() - t0
        self._settle_posted()
        self.bytes_received += sum(len(pickle.dumps(r, protocol=5)) for r in results)
        return results

    def _peer_died(self, pending: list, timeout_s: float = 10.0) -> bool:
        """After one rank raised: did another die (or hang in a collective it can no longer finish)?"""
        import ray

        if not pending:
            return False
        ready, still = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                return True
            except Exception:  # noqa: BLE001 - another task error: deterministic failure
                pass
        return bool(still)

    def kill(self, rank: int) -> None:
        """Kill one actor (fault-injection in tests)."""
        import ray

        ray.kill(self.actors[rank], no_restart=True)

    def shutdown(self) -> None:
        """Leave the process group on every rank, kill the actors and free the placement group."""
        import ray

        if self._alive:
            try:
                refs = [a.shutdown.remote() for a in self.actors]
                ray.wait(refs, num_returns=len(refs), timeout=10)
            except Exception:  # noqa: BLE001 - teardown is best effort
                pass
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        try:
            ray.util.remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001
            pass
        self._alive = False

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
