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

    def new_handle(self) -> ShardedVector:
        return ShardedVector(self.group, next(self._ids))

    def dot(self, x: ShardedVector, y: ShardedVector) -> float:
        return float(self.group.execute_all("dot", x.id, y.id)[0])

    def dots(self, x: ShardedVector, ys: list[ShardedVector]) -> list[float]:
        """[x . y for y in ys] with a single all-reduce."""
        if not ys:
            return []
        return list(self.group.execute_all("dots", x.id, [y.id for y in ys])[0])

    def norm(self, x: ShardedVector) -> float:
        return max(self.dot(x, x), 0.0) ** 0.5

    def axpy(self, a: float, x: ShardedVector, y: ShardedVector) -> ShardedVector:
        self.group.execute_all("axpy", float(a), x.id, y.id)
        return y

    def scale(self, a: float, x: ShardedVector) -> ShardedVector:
        self.group.execute_all("scale", float(a), x.id)
        return x

    def copy(self, x: ShardedVector) -> ShardedVector:
        out = self.new_handle()
        self.group.execute_all("copy", x.id, out.id)
        return out

    def zeros_like(self, x: ShardedVector) -> ShardedVector:
        out = self.new_handle()
        self.group.execute_all("zeros", out.id)
        return out

    def lincomb(self, coeffs: list[float], vectors: list[ShardedVector]) -> ShardedVector:
        """A new vector sum_i c_i v_i (accumulated in float64 on each shard): one round trip for d = Q y."""
        out = self.new_handle()
        self.group.execute_all("lincomb", [float(c) for c in coeffs], [v.id for v in vectors], out.id)
        return out

    def random_like(self, x: ShardedVector, seed: int = 0, kind: str = "normal") -> ShardedVector:
        """A new random vector (standard normal or Rademacher entries), each shard drawn on its rank."""
        out = self.new_handle()
        self.group.execute_all("random_like", out.id, int(seed), str(kind))
        return out

    def is_finite(self, x: ShardedVector) -> bool:
        return bool(self.group.execute_all("is_finite", x.id)[0])

    def release(self, x: ShardedVector) -> None:
        if isinstance(x, ShardedVector) and x._finalizer.alive:
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
