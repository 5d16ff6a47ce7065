"""The in-process curvature oracle: a model, a loss and the retain data on one device."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from dist_unlearn.cost import CostCounter
from dist_unlearn.curvature._common import accumulate_dtype, check_loss, fill_none
from dist_unlearn.curvature.attention import ensure_double_backward_attention, math_sdpa
from dist_unlearn.curvature.batches import ExampleSource
from dist_unlearn.curvature.ggn import check_ggn_loss, ggn_vp_batch
from dist_unlearn.curvature.hvp_exact import exact_hvp_batch
from dist_unlearn.curvature.hvp_fd import fd_hvp, quantize_step
from dist_unlearn.errors import ConfigError, ModelError, reject_unknown
from dist_unlearn.linalg import TensorSpace
from dist_unlearn.linalg.compensated import Compensated

HVP_MODES = ("exact", "fd", "ggn")
DEFAULT_BATCH_SIZE = 64


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name}={value!r} must be a positive integer or None.")
    return value


class LocalOracle:
    """:class:`~dist_unlearn.curvature.oracle.CurvatureOracle` over a model's trainable parameters.

    L(w) = (1/|S|) sum_{i in S} loss_i(w), with S the whole retain set (default) or the mini-batches drawn by
    :meth:`resample` when ``grad_batch_size`` / ``hvp_batch_size`` are set (the stochastic variant: the
    gradient
    and the HVP use independent samples, fixed until the next :meth:`resample`). Sums run over chunks of
    ``batch_size`` examples, each chunk weighted by its size, so the result is the exact mean over S for any
    chunking (``loss_fn`` must return the mean over its batch). The model is put in eval mode (dropout off)
    and
    HF attention is switched to ``eager`` for ``exact`` and ``ggn``.

    Vectors are tuples of per-parameter tensors (:class:`~dist_unlearn.linalg.TensorSpace`) in fp32 or wider;
    for models stored in a lower precision the oracle keeps fp32 master weights that :meth:`apply_update`
    and the
    finite differences work on.

    Args:
        model: the ``nn.Module`` (HF, peft or plain).
        loss_fn: ``loss_fn(model, batch) -> scalar`` batch mean; None -> ``models.default_loss_fn(model)``.
            ``hvp="ggn"`` needs ``.outputs`` / ``.from_outputs`` on it.
        data: torch ``Dataset`` / ``DataLoader`` / ``datasets.Dataset`` of retain examples.
        hvp: "exact" (double backward), "fd" (central difference of gradients) or "ggn" (Gauss-Newton).
        batch_size: examples per chunk (memory bound); default the DataLoader's batch size, else 64.
        grad_batch_size: gradient/loss sample size for the stochastic variant (None: all examples).
        hvp_batch_size: HVP sample size for the stochastic variant (None: all examples).
        seed: seed of the first sample; :meth:`resample` draws new ones.
        collate_fn: list of rows -> batch (default: the DataLoader's, or torch's default_collate).
        params: parameters to differentiate (default: those with ``requires_grad``, e.g. only LoRA adapters).
        device: move the model and batches there (default: the device of the first parameter).
        progress: show a tqdm bar over chunks.
        fd_eps: fixed finite-difference perturbation size h (the step is h / |v|); default: the rule of
            :mod:`.hvp_fd` (the one the engine's workers use).
        role: the cost role of this oracle's rows (:data:`dist_unlearn.cost.ROLES`): ``"retain"`` for the
            retain term, ``"forget"`` for a forgetting objective's forget term.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None,
        data: Any,
        *,
        hvp: str = "exact",
        batch_size: int | None = None,
        grad_batch_size: int | None = None,
        hvp_batch_size: int | None = None,
        seed: int = 0,
        collate_fn: Callable | None = None,
        params: Sequence[torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
        fd_eps: float | None = None,
        role: str = "retain",
    ):
        if hvp not in HVP_MODES:
            reject_unknown("hvp mode", [hvp], HVP_MODES)
        for name, value in (
            ("batch_size", batch_size),
            ("grad_batch_size", grad_batch_size),
            ("hvp_batch_size", hvp_batch_size),
        ):
            _positive(name, value)
        if fd_eps is not None and not fd_eps > 0:
            raise ConfigError(f"fd_eps={fd_eps!r} must be a positive number or None.")
        if device is not None:
            model.to(device)
        model.eval()
        if loss_fn is None:
            from dist_unlearn.models.losses import default_loss_fn

            loss_fn = default_loss_fn(model)
        if hvp == "ggn":
            check_ggn_loss(loss_fn)
        self.attn_implementation = ensure_double_backward_attention(model) if hvp != "fd" else None
        self.params = (
            list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        )
        if not self.params:
            raise ModelError("the model has no trainable parameters (none with requires_grad=True).")
        names = {id(p): n for n, p in model.named_parameters()}
        self.parameter_names = [names.get(id(p), f"param{i}") for i, p in enumerate(self.params)]
        self.device = torch.device(device) if device is not None else self.params[0].device
        self.model, self.loss_fn, self.hvp_mode = model, loss_fn, hvp
        self.source = ExampleSource(data, collate_fn, self.device)
        self.batch_size = batch_size or self.source.default_batch_size or DEFAULT_BATCH_SIZE
        self.grad_batch_size, self.hvp_batch_size = grad_batch_size, hvp_batch_size
        self.progress, self.fd_eps, self.last_fd_eps = progress, fd_eps, None
        self.space = TensorSpace()
        self.counters: dict[str, int] = {
            "gradients": 0,
            "hvps": 0,
            "losses": 0,
            "fd_gradients": 0,
            "examples": 0,
        }
        self.cost = CostCounter()
        """Work done, in example passes by kind (``gradient``, ``loss``, ``hvp_exact`` / ``hvp_fd`` /
        ``hvp_ggn``): one entry per operation with the number of examples it touched, under :attr:`role`."""
        self.role = role
        low = [p for p in self.params if accumulate_dtype(p) != p.dtype]
        self._master = [p.detach().to(accumulate_dtype(p)).clone() for p in self.params] if low else None
        self._seed, self._draws = int(seed), 0
        self.resample(self._seed)

    # ---- samples -------------------------------------------------------------------------------------------
    @property
    def stochastic(self) -> bool:
        """True when the gradient or the HVP uses a mini-batch sample."""
        return self.grad_batch_size is not None or self.hvp_batch_size is not None

    @property
    def num_examples(self) -> int:
        """Number of retain examples."""
        return self.source.n

    def resample(self, seed: int | None) -> None:
        """Draw the gradient and HVP samples (no-op for full-batch). seed=None -> the next seed in
        sequence."""
        if seed is None:
            self._draws += 1
            seed = self._seed + self._draws
        from dist_unlearn.curvature.sample import draw_samples

        n = self.source.n
        grad_rows, hvp_rows = draw_samples(n, self.grad_batch_size, self.hvp_batch_size, seed)
        self.grad_indices = list(range(n)) if grad_rows is None else grad_rows
        self.hvp_indices = list(range(n)) if hvp_rows is None else hvp_rows

    def use_rows(self, grad_rows: Sequence[int] | None, hvp_rows: Sequence[int] | None) -> None:
        """Fix the gradient / loss rows and the HVP rows (example ids; None: every example) until the next
        :meth:`resample` (cure_newton's fixed retain samples, :mod:`dist_unlearn.curvature.sample`)."""
        every = list(range(self.source.n))
        self.grad_indices = every if grad_rows is None else sorted(int(i) for i in grad_rows)
        self.hvp_indices = every if hvp_rows is None else sorted(int(i) for i in hvp_rows)

    def _chunks(self, indices: list[int], what: str) -> Iterator[tuple[Any, float, str]]:
        it = self.source.chunks(indices, self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=-(-len(indices) // self.batch_size), desc=what, leave=False)
        for k, (batch, weight) in enumerate(it):
            self.counters["examples"] += round(weight * len(indices))
            yield batch, weight, f"{what} chunk {k} (examples {k * self.batch_size}..)"

    # ---- loss and gradient ---------------------------------------------------------------------------------
    def _acc(self) -> list[Compensated]:
        """Double-double accumulators (:class:`~dist_unlearn.linalg.compensated.Compensated`): the terms
        c w_k g_k of the chunks are summed so that the rounded result does not depend on their order or on
        how the sum is split (the engine's ranks sum the same terms in another order: the same bits)."""
        return [Compensated(p.shape, p.device) for p in self.params]

    def _rounded(self, acc: list[Compensated]) -> tuple[torch.Tensor, ...]:
        return tuple(a.rounded(accumulate_dtype(p)) for a, p in zip(acc, self.params, strict=True))

    def _loss_grad64(
        self, indices: list[int], what: str, coef: float = 1.0
    ) -> tuple[float, list[Compensated]]:
        """(L, accumulators of coef grad L) over ``indices``: chunk k adds w_k l_k and (coef w_k) g_k."""
        total, acc = 0.0, self._acc()
        with math_sdpa():
            for batch, w, where in self._chunks(indices, what):
                loss = check_loss(self.loss_fn(self.model, batch), where)
                grads = fill_none(torch.autograd.grad(loss, self.params, allow_unused=True), self.params)
                total += w * float(loss.detach().double())
                for a, g in zip(acc, grads, strict=True):
                    a.add_(g.to(torch.float64) * (coef * w))
        return total, acc

    def _loss_grad(self, indices: list[int], what: str) -> tuple[float, tuple[torch.Tensor, ...]]:
        total, acc = self._loss_grad64(indices, what)
        g = self._rounded(acc)
        self.space.check_finite(g, f"the gradient of the retain loss ({what})")
        return total, g

    def loss_and_gradient64(self, coef: float = 1.0) -> tuple[float, list[Compensated]]:
        """(L(w), coef grad L(w) as unrounded accumulators), counted like :meth:`loss_and_gradient` (for
        objectives that combine several oracles before rounding)."""
        self.counters["losses"] += 1
        self.counters["gradients"] += 1
        self.cost.add("gradient", len(self.grad_indices), role=self.role)
        return self._loss_grad64(self.grad_indices, "gradient", coef)

    def loss(self) -> float:
        """L(w) on the gradient sample (mean over its examples)."""
        self.counters["losses"] += 1
        self.cost.add("loss", len(self.grad_indices), role=self.role)
        total = 0.0
        with torch.no_grad():
            for batch, w, where in self._chunks(self.grad_indices, "loss"):
                total += w * float(check_loss(self.loss_fn(self.model, batch), where).double())
        return total

    def loss_and_gradient(self) -> tuple[float, tuple[torch.Tensor, ...]]:
        """(L(w), grad L(w)) on the gradient sample, in one pass."""
        self.counters["losses"] += 1
        self.counters["gradients"] += 1
        self.cost.add("gradient", len(self.grad_indices), role=self.role)
        return self._loss_grad(self.grad_indices, "gradient")

    def gradient(self) -> tuple[torch.Tensor, ...]:
        """grad L(w) on the gradient sample."""
        return self.loss_and_gradient()[1]

    # ---- curvature -----------------------------------------------------------------------------------------
    def _check_vector(self, v: Any, what: str) -> tuple[torch.Tensor, ...]:
        v = (
            (v,)
            if isinstance(v, torch.Tensor) and len(self.params) == 1 and v.shape == self.params[0].shape
            else v
        )
        if not isinstance(v, tuple | list) or len(v) != len(self.params):
            raise ValueError(
                f"{what} must be a tuple of {len(self.params)} tensors (one per trainable parameter)."
            )
        for i, (vi, p) in enumerate(zip(v, self.params, strict=True)):
            if vi.shape != p.shape:
                raise ValueError(
                    f"{what}[{i}] ({self.parameter_names[i]}) has shape {tuple(vi.shape)}, "
                    f"expected {tuple(p.shape)}."
                )
        self.space.check_finite(tuple(v), what)
        return tuple(vi.to(self.device) for vi in v)

    def hvp_pass_cost(self) -> float:
        """Example passes one :meth:`hvp` on the current sample will count (a cost cap's prediction)."""
        return len(self.hvp_indices) * self.cost.weights[f"hvp_{self.hvp_mode}"]

    def hvp(self, v: Any) -> tuple[torch.Tensor, ...]:
        """H v on the HVP sample: exact Hessian, finite-difference Hessian or Gauss-Newton, by ``hvp``
        mode."""
        v = self._check_vector(v, "the HVP direction v")
        if self.hvp_mode == "fd":
            self.count_fd_hvp()
            hv, self.last_fd_eps = self.fd_product(
                lambda: self._loss_grad(self.hvp_indices, "fd-hvp gradient")[1], v
            )
        else:
            hv = self._rounded(self.hvp64(v, checked=True))
        self.space.check_finite(hv, f"the Hessian-vector product ({self.hvp_mode})")
        return hv

    def count_fd_hvp(self) -> None:
        """Count one finite-difference HVP (two gradient passes over the HVP sample)."""
        self.counters["hvps"] += 1
        self.counters["fd_gradients"] += 2
        self.cost.add("hvp_fd", len(self.hvp_indices), role=self.role)

    def fd_product(self, gradient: Any, v: Any) -> tuple[tuple[torch.Tensor, ...], float]:
        """(H v, eps) by central differences of ``gradient()`` on these weights (the step rule of
        :mod:`.hvp_fd`, or the fixed perturbation size ``fd_eps``)."""
        eps = None
        if self.fd_eps is not None:
            eps = quantize_step(self.fd_eps / max(float(self.space.norm(v)), 1e-300))
        return fd_hvp(gradient, self.params, v, master=self._master, eps=eps)

    def hvp64(self, v: Any, checked: bool = False, coef: float = 1.0) -> list[Compensated]:
        """Exact / Gauss-Newton coef H v as unrounded accumulators, counted as one HVP."""
        if not checked:
            v = self._check_vector(v, "the HVP direction v")
        self.counters["hvps"] += 1
        self.cost.add(f"hvp_{self.hvp_mode}", len(self.hvp_indices), role=self.role)
        batch_hvp = exact_hvp_batch if self.hvp_mode == "exact" else ggn_vp_batch
        acc = self._acc()
        with math_sdpa():
            for batch, w, where in self._chunks(self.hvp_indices, "hvp"):
                _, hvb = batch_hvp(self.loss_fn, self.model, batch, self.params, v, where)
                for a, h in zip(acc, hvb, strict=True):
                    a.add_(h.to(torch.float64) * (coef * w))
        return acc

    # ---- weights -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def apply_update(self, d: Any, scale: float = 1.0) -> None:
        """w <- w + scale * d (in the fp32 master weights when the model is stored in lower precision)."""
        d = self._check_vector(d, "the update d")
        if self._master is None:
            for p, di in zip(self.params, d, strict=True):
                p.add_(di.to(p.dtype), alpha=float(scale))
        else:
            for p, m, di in zip(self.params, self._master, d, strict=True):
                m.add_(di.to(m.dtype), alpha=float(scale))
                p.copy_(m.to(p.dtype))

    def snapshot(self) -> tuple[torch.Tensor, ...]:
        """A copy of the current weights (the master copy when there is one)."""
        src = self._master if self._master is not None else self.params
        return tuple(t.detach().clone() for t in src)

    @torch.no_grad()
    def restore(self, snap: tuple[torch.Tensor, ...]) -> None:
        """Set the weights back to a :meth:`snapshot`, bit-exactly."""
        if self._master is None:
            for p, s in zip(self.params, snap, strict=True):
                p.copy_(s)
        else:
            for p, m, s in zip(self.params, self._master, snap, strict=True):
                m.copy_(s)
                p.copy_(m.to(p.dtype))

    def parameters_vector(self) -> tuple[torch.Tensor, ...]:
        """A copy of the current weights as a vector of :attr:`space` (fp32 or wider)."""
        src = self._master if self._master is not None else self.params
        return tuple(t.detach().to(accumulate_dtype(t)).clone() for t in src)


__all__ = ["LocalOracle", "HVP_MODES"]
