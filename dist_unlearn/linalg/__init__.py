"""Vector spaces the solvers work in.

The solvers only ever call the methods of :class:`VectorSpace` plus a ``matvec`` callable, so a vector may be
a local tensor (:class:`TensorSpace`) or a handle to shards living on Ray workers
(``dist_unlearn.distributed.ShardedSpace``) without the solver code changing.
"""

from dist_unlearn.linalg.space import Vector, VectorSpace
from dist_unlearn.linalg.tensor_space import TensorSpace

__all__ = ["VectorSpace", "Vector", "TensorSpace"]
