"""Distributed engine: Ray actors as DeepSpeed ZeRO ranks, Krylov vectors kept on the workers.

- :class:`WorkerGroup`: the gang of rank actors (placement group, rendezvous, ``execute_all``, shutdown).
- :class:`ShardedSpace` / :class:`ShardedVector`: the VectorSpace of handles (only scalars reach the driver).
- :class:`RayOracle`: the CurvatureOracle over a group.
- :func:`run_distributed`: ``dist_unlearn.unlearn(..., workers=N)`` end to end, with checkpoints/restarts.
"""

from dist_unlearn.distributed.group import WorkerDiedError, WorkerGroup
from dist_unlearn.distributed.oracle import RayOracle
from dist_unlearn.distributed.space import ShardedSpace, ShardedVector


def __getattr__(name: str):
    # engine imports the methods package; keep `import dist_unlearn.distributed` light.
    homes = {"run_distributed": "engine", "build_group": "startup", "make_ds_config": "dsconfig"}
    if name in homes:
        import importlib

        return getattr(importlib.import_module(f"dist_unlearn.distributed.{homes[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "WorkerGroup",
    "WorkerDiedError",
    "ShardedSpace",
    "ShardedVector",
    "RayOracle",
    "run_distributed",
    "build_group",
]
