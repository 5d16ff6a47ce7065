"""Vectors that stay on the workers: the coordinator holds handles and receives only scalars."""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from dist_unlearn.distributed.group import WorkerGroup


class ShardedVector:
    """A handle to a parameter-space vector whose shards live on the ranks of a :class:`WorkerGroup`.

    Dropping the last reference frees the shards (asynchronously); :meth:`ShardedSpace.release` frees them
    at once. The handle carries no data.
    """

    __slots__ = ("id", "_finalizer", "__weakref__")

    def __init__(self, group: WorkerGroup, vid: int) -> None:
        self.id = vid
        self._finalizer = weakref.finalize(self, _release, group, vid)

    def __repr__(self) -> str:
        return f"ShardedVector(id={self.id})"


def _release(group: WorkerGroup, vid: int) -> None:
    try:
        group.release_later([vid])
    except Exception:  # noqa: BLE001 - the group may already be gone (interpreter exit, restart)
        pass


class ShardedSpace:
    """:class:`~dist_unlearn.linalg.VectorSpace` over :class:`ShardedVector` handles.

    ``dot(x, y) = sum_r x_r . y_r``: each rank computes its local float64 dot and the ranks all-reduce it;
    the coordinator receives one float per rank. axpy / scale / copy / zeros_like / lincomb run on every
    shard in place and return nothing but the handle, so the bytes the coordinator receives per operation do
    not depend on the model size.

    Args:
        group: the worker group holding the shards.
    """

    def __init__(self, group: WorkerGroup) -> None:
        self.group = group
        self._ids = itertools.count(1)
        self._known: dict[int, dict[str, Any]] = {}  # norm / finiteness the workers reported with a vector

    def new_handle(self) -> ShardedVector:
        return ShardedVector(self.group, next(self._ids))

    def remember(self, x: ShardedVector, **facts: Any) -> None:
        """Record what the workers computed about ``x`` when they made it (``norm``, ``finite``), so asking
        again costs no round trip; forgotten when ``x`` changes in place."""
        self._known.setdefault(x.id, {}).update(facts)

    def _forget(self, x: ShardedVector) -> None:
        self._known.pop(x.id, None)

    def dot(self, x: ShardedVector, y: ShardedVector) -> float:
        return float(self.group.execute_all("dot", x.id, y.id)[0])

    def dots(self, x: ShardedVector, ys: list[ShardedVector]) -> list[float]:
        """[x . y for y in ys] with a single all-reduce."""
        if not ys:
            return []
        return list(self.group.execute_all("dots", x.id, [y.id for y in ys])[0])

    def norm(self, x: ShardedVector) -> float:
        known = self._known.get(x.id, {}).get("norm")
        if known is not None:
            return float(known)
        return max(self.dot(x, x), 0.0) ** 0.5

    # The updates below return nothing the driver needs: they are posted (no round trip, see
    # WorkerGroup.post_all) and run on every rank before the next synchronous call.
    def axpy(self, a: float, x: ShardedVector, y: ShardedVector) -> ShardedVector:
        self._forget(y)
        self.group.post_all("axpy", float(a), x.id, y.id)
        return y

    def scale(self, a: float, x: ShardedVector) -> ShardedVector:
        self._forget(x)
        self.group.post_all("scale", float(a), x.id)
        return x

    def copy(self, x: ShardedVector) -> ShardedVector:
        out = self.new_handle()
        self.group.post_all("copy", x.id, out.id)
        if x.id in self._known:
            self._known[out.id] = dict(self._known[x.id])
        return out

    def zeros_like(self, x: ShardedVector) -> ShardedVector:
        out = self.new_handle()
        self.group.post_all("zeros", out.id)
        self.remember(out, norm=0.0, finite=True)
        return out

    def lincomb(self, coeffs: list[float], vectors: list[ShardedVector]) -> ShardedVector:
        """A new vector sum_i c_i v_i (accumulated in float64 on each shard): d = Q y without a round trip."""
        out = self.new_handle()
        self.group.post_all("lincomb", [float(c) for c in coeffs], [v.id for v in vectors], out.id)
        return out

    def random_like(self, x: ShardedVector, seed: int = 0, kind: str = "normal") -> ShardedVector:
        """A new random vector (standard normal or Rademacher entries), each shard drawn on its rank."""
        out = self.new_handle()
        self.group.post_all("random_like", out.id, int(seed), str(kind))
        return out

    def orthonormal_start(
        self, v0: ShardedVector, locked: list[ShardedVector], watch: list[ShardedVector]
    ) -> tuple[ShardedVector | None, float, list[float]]:
        """A Lanczos block's first vector in one round trip: v0 projected twice off ``locked`` (classical
        Gram-Schmidt), normalised; with its norm and its dots with ``watch`` (what
        :class:`~dist_unlearn.solvers.LanczosProcess` does op by op, with the same arithmetic)."""
        out = self.new_handle()
        norm, dots = self.group.execute_all(
            "orthonormal_start", v0.id, [v.id for v in locked], [w.id for w in watch], out.id
        )[0]
        if not (norm > 0.0):
            self.release(out)
            return None, float(norm), []
        return out, float(norm), list(dots)

    def is_finite(self, x: ShardedVector) -> bool:
        known = self._known.get(x.id, {}).get("finite")
        if known is not None:
            return bool(known)
        return bool(self.group.execute_all("is_finite", x.id)[0])

    def release(self, x: ShardedVector) -> None:
        if isinstance(x, ShardedVector) and x._finalizer.alive:
            self._forget(x)
            x._finalizer()

    # -- tests / debugging only: these move whole vectors and are never used by the solvers --------------
    def gather(self, x: ShardedVector) -> Any:
        """The full vector as a tuple of per-parameter torch tensors (driver memory: tests only)."""
        from dist_unlearn.distributed.layout import gather_shards

        layouts = self.group.execute_all("layout")
        return gather_shards(layouts, self.group.execute_all("fetch", x.id))

    def scatter(self, full: Any) -> ShardedVector:
        """Store a full vector (tuple of per-parameter tensors) as shards (tests only)."""
        import ray

        from dist_unlearn.distributed.layout import scatter_full

        layouts = self.group.execute_all("layout")
        out = self.new_handle()
        shards = scatter_full(layouts, full)
        ray.get([a.put.remote(s, out.id) for a, s in zip(self.group.actors, shards, strict=True)])
        return out
