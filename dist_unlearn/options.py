"""Options of :func:`dist_unlearn.unlearn`: one validated object shared by every method.

Names every method shares: ``max_steps``, ``M``, ``tol``, ``hvp``, ``batch_size``, ``seed``, ``progress``.
The others are method specific (``lr``, ``epochs``, ``damping``, ...) or consumed by the distributed engine
(``workers``, ``zero_stage``, ``deepspeed_config``, ``max_restarts``, ``checkpoint_dir``). Unknown names are
rejected with the closest allowed name; bad values raise :class:`~dist_unlearn.errors.ConfigError` naming the
option, the value and what is allowed. Options left at ``None`` whose default depends on the method
(``max_steps``, ``lr``, ``epochs``, ...) are filled in by the method registry (``MethodSpec.defaults``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dist_unlearn.errors import ConfigError, reject_unknown


def _format(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(options)"
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        given = e.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        parts.append(f"option {loc}: {msg}{shown}")
    return "invalid unlearning options: " + "; ".join(parts)


class UnlearnOptions(BaseModel):
    """Validated options of an unlearning run (see the module docstring for the groups).

    Construct with keyword arguments: ``UnlearnOptions(M=10.0, max_steps=5)``. Unknown names and bad values
    raise :class:`~dist_unlearn.errors.ConfigError` (never a pydantic ``ValidationError``).
    """

    # strict: no bool for a number (M=True), no "2" for an int; ints are fine for floats
    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, validate_assignment=True, strict=True
    )

    # ---- shared by every method -------------------------------------------------------------------------
    max_steps: int | None = Field(default=None, ge=1)
    """Outer steps (curvature methods: accepted updates) or optimizer steps (first-order; None = all epochs).
    None = the method's default (cure_newton 10, 40 on a kept curvature basis, 3 for the retain objective on
    a retain sample; the stochastic variant 20; damped/pinv Newton 1)."""
    M: float | None = None
    """Cubic regularisation constant (a Hessian-Lipschitz bound), > 0. None = automatic ARC adaptation."""
    tol: float | None = Field(default=None, ge=0)
    """Stop when the retain-gradient norm |g| <= tol (curvature methods). None (default): stop when the
    model stops changing instead -- |g_k| <= grad_rtol |g_0| or a step below step_rtol x the longest;
    a number turns those relative rules off unless they are given too."""
    hvp: Literal["exact", "fd", "ggn"] = "exact"
    """Curvature products: exact double backward, central finite differences, or Gauss-Newton."""
    batch_size: int | None = Field(default=None, ge=1)
    """Chunk size of full-batch oracle passes; mini-batch of first-order methods (None: their default)."""
    seed: int = 0
    progress: bool = False
    """Show tqdm progress bars."""
    device: str | None = None
    """Device to run on (None: where the model is)."""
    collate_fn: Callable | None = None
    """Collate function of the data loaders (None: default collation)."""
    max_example_passes: float | None = Field(default=None, gt=0)
    """Cost cap in example passes (the count of ``stats["cost"]["example_passes"]``, see
    :mod:`dist_unlearn.cost`): the run stops (stop_reason "budget") before a unit of work that would take it
    over the cap -- curvature methods before each outer step and each HVP of a solve (exceeding it by at
    most one HVP, see :mod:`dist_unlearn.methods.budget`), first-order methods before each optimiser step.
    Example: 10% of retraining = 0.1 x epochs x n_train. None: no cap."""

    # ---- CureNewton and ARC -----------------------------------------------------------------------------
    M_init: float | None = Field(default=None, gt=0)
    """First M of the ARC adaptation (None: 2 rho^2/|g|, rho = |lambda|_max estimated by Lanczos)."""
    M_min: float = Field(default=1e-10, gt=0)
    """Lower bound of the adapted M."""
    arc_eta1: float = Field(default=0.1, gt=0, lt=1)
    """Accept a step when rho = actual / predicted decrease >= arc_eta1."""
    arc_eta2: float = Field(default=0.9, gt=0, lt=1)
    """A step with rho >= arc_eta2 is very successful: M shrinks."""
    arc_shrink: float = Field(default=0.1, gt=0, le=1)
    """M <- max(M_min, arc_shrink * M) after a very successful step."""
    arc_grow: float = Field(default=4.0, gt=1)
    """M <- arc_grow * M after a rejected step."""
    max_rejections: int = Field(default=20, ge=1)
    """Stop after this many consecutive rejected steps."""
    eig_iterations: int = Field(default=10, ge=1)
    """Lanczos iterations of the |lambda|_max estimate behind the initial M."""
    first_M_tries: int = Field(default=7, ge=1)
    """First adaptive step: try M0, M0/f, ..., M0/f^(n-1) on one Krylov space (one loss evaluation each, no
    HVP) and keep the largest actual decrease with rho >= arc_eta1. 1 = use M0 only (the old rule)."""
    first_M_factor: float = Field(default=10.0, gt=1)
    """Ratio f between consecutive tries of ``first_M_tries``."""
    krylov_tol: float = Field(default=1e-6, gt=0)
    """Relative residual |beta_k y_k| / |g| at which the Krylov (Lanczos) solve stops (the floor of the
    forcing sequence when ``krylov_forcing`` > 0)."""
    krylov_forcing: float | None = Field(default=None, ge=0, lt=1)
    """Inexact Newton: solve step k to the relative residual max(krylov_tol, krylov_forcing *
    min(1, sqrt(|g_k| / |g_0|))) -- loose while |g| is large, tight near the end. 0 = always krylov_tol;
    None: 0.1 unless ``krylov_tol`` was given (then 0: the given tolerance is used as is)."""
    krylov_max_iter: int | None = Field(default=None, ge=1)
    """Per-solve HVP budget: most Lanczos iterations (= HVPs) per solve (None: the method's default,
    cure_newton 30, damped / pinv Newton 100)."""
    retain_sample: int | Literal["all"] | None = None
    """cure_newton: the retain term's gradient, loss and HVPs (ARC trial losses, first-M tries, final stats)
    on a fixed random sample of this many retain rows, drawn once per run
    (:mod:`dist_unlearn.curvature.sample`), so the cost does not grow with the training set. None: 2048
    rows for the retain objective (its minimiser is the answer), 64 for a forgetting objective (the retain
    term holds the retained rows in place); all rows when there are fewer. "all": every row. The forget set
    is always read whole."""
    hvp_sample: int | Literal["all"] | None = None
    """cure_newton: the HVPs on a smaller sample of this many rows, nested in the ``retain_sample`` rows
    (None: the same rows; "all": every row)."""
    reuse_curvature: bool | None = None
    """Cubic methods: keep the Lanczos basis of one point for the following steps' solves, so a later step
    costs a gradient and a trial loss instead of up to ``krylov_max_iter`` HVPs
    (:mod:`dist_unlearn.methods.kept_curvature`). None: on for a forgetting objective, off for the retain
    objective and the stochastic variant; False: a fresh Krylov solve at every step (the paper's method)."""
    curvature_refresh: int = Field(default=2, ge=0)
    """Rebuild the kept basis at the current point after this many rejected steps in a row solved on a basis
    built elsewhere (0: never rebuild)."""
    grad_rtol: float | None = Field(default=None, ge=0)
    """Stop ("converged") when |g_k| <= grad_rtol |g_0| (0 = off; None: 1e-3 when ``tol`` is None, else
    off)."""
    step_rtol: float | None = Field(default=None, ge=0)
    """Stop ("stalled") after an accepted step with |d| <= step_rtol x the longest accepted |d| (0 = off;
    None: 1e-2 when ``tol`` is None, else off)."""
    reorthogonalize: bool = True
    store_basis: bool = True
    """Keep the Lanczos basis (False: rebuild the step with a second Lanczos pass, O(1) vectors)."""

    objective: Literal["retain", "grad_diff", "npo", "match_unseen"] = "retain"
    """Curvature methods: the loss the steps minimise -- "retain" (the paper: the retain loss), "grad_diff"
    (retain loss - forget_weight x forget loss), "npo" (retain loss + forget_weight x the NPO forget term) or
    "match_unseen" (retain loss + forget_weight x each forget row's squared distance to its bin of the
    calibration losses, :mod:`dist_unlearn.targets`; needs ``calibration``, and is the objective used when
    ``calibration`` is given and no objective is); see :mod:`dist_unlearn.curvature.objective`."""
    gradient: Literal["full", "influence"] | None = None
    """Curvature methods, objective "retain": "influence" anchors the retain objective at the first gradient
    from the forget set, g_0 = -(n_f/n_r) grad L_f(w_0) (valid at a stationary point of the training loss;
    later gradients add the retain rows' gradient change, :mod:`dist_unlearn.curvature.objective`). None:
    "influence" when cure_newton's retain sample is smaller than the retain set, else "full"."""
    calibration: Any = None
    """Data the model never saw (a Dataset / DataLoader / datasets.Dataset). Turns on the forgetting stop rule
    (:mod:`dist_unlearn.stopping`): stop once every subject of the forget set (``forget_subjects``; else the
    forget set as a whole) looks like these rows, refuse steps that push a subject past them. Curvature
    methods then default to the ``match_unseen`` objective. Keep it apart from the data a verdict is judged
    on. None: no stop rule."""
    stop_auc_band: float = Field(default=0.1, gt=0, lt=0.5)
    """The stop rule's band without subjects: |AUC - 0.5| <= band stops the run, AUC < 0.5 - band is an
    overshoot (with subjects each subject has its own band, :mod:`dist_unlearn.eval.subjects`)."""
    stop_within: float = Field(default=1.0, gt=0, le=1)
    """The stop rule stops only when every subject is past this share of its band's recognisable half
    (q_S >= 1/2 - stop_within h_S; aggregate: AUC <= 1/2 + stop_within band); an overshoot is still a subject
    past the whole band on the other side. 1: anywhere in the band."""
    bin_span: float | None = Field(default=None, gt=0, le=1)
    """match_unseen: the central share of the calibration losses' distribution the forget rows' bins cover
    (:mod:`dist_unlearn.targets`); below 1 no row is left in the tails. None: 0.5
    (:data:`dist_unlearn.targets.BIN_SPAN`)."""
    stop_verbatim: bool = False
    """match_unseen: the extraction condition -- do not stop while more forget rows are answered word for
    word by greedy decoding than the calibration rows' rate allows, and push the weakest answer token of each
    such row below its runner-up (:mod:`dist_unlearn.answer_leads`; causal LMs, decided from the stop
    check's own forward passes, so it costs no extra pass). False: losses only."""
    retain_tolerance: float | None = Field(default=None, gt=0)
    """With ``calibration``: refuse a step after which a fixed sample of retained rows lost more than this
    share of its lead over the calibration rows (mean loss r > r_0 + tol (c_0 - r_0)); the step is shortened
    (first-order: back to the last good point, half the learning rate). None: no guard."""
    unseen_tolerance: float | None = Field(default=None, gt=0)
    """With ``retain_tolerance``: also refuse a step after which the calibration rows' mean loss moved by more
    than this share of its value at the weights as given (data the model never saw must keep its loss).
    None: not watched."""
    stop_every: int | None = Field(default=None, ge=1)
    """First-order methods with ``calibration``: run the stop rule every this many optimiser steps (None:
    after each epoch). Each check is a forward pass over the forget and calibration rows."""
    forget_subjects: list[Any] | None = None
    """The subject (person, author, document) of each forget row, in the forget set's order: the unit a
    deletion request names, judged one by one (:mod:`dist_unlearn.eval.subjects`). None: each row its own."""
    calibration_subjects: list[Any] | None = None
    """The subject of each calibration row, in its order (estimates how alike one subject's rows are)."""

    # ---- stochastic variant -----------------------------------------------------------------------------
    grad_batch_size: int | None = Field(default=None, ge=1)
    """Gradient mini-batch of cure_newton_stochastic (None: 128, the paper's)."""
    hvp_batch_size: int | None = Field(default=None, ge=1)
    """HVP mini-batch of cure_newton_stochastic (None: 64, the paper's)."""
    cubic_solver: Literal["krylov", "gd"] = "krylov"
    """Subproblem solver of cure_newton_stochastic: Krylov (Lanczos) or gradient descent on the model."""
    cubic_lr: float | None = Field(default=None, gt=0)
    """Step size of the gradient-descent cubic solver (None: its own choice)."""

    # ---- Newton baselines -------------------------------------------------------------------------------
    damping: float = Field(default=1e-3, ge=0)
    """lambda of damped Newton, d = -(H + lambda I)^-1 g."""
    rank: int | None = Field(default=None, ge=1)
    """pinv Newton: number of Lanczos eigenpairs kept (None: all the Krylov space gives)."""
    threshold: float | None = Field(default=None, ge=0)
    """pinv Newton: eigenvalues with |lambda| <= threshold are treated as zero."""

    # ---- first-order methods and retraining -------------------------------------------------------------
    lr: float | None = Field(default=None, gt=0)
    epochs: int | None = Field(default=None, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    """Clip the gradient norm of first-order steps to this value."""
    forget_weight: float = Field(default=1.0, ge=0)
    """Weight of the forget term (grad_ascent, grad_diff, npo)."""
    retain_loss: Literal["nll", "kl"] | None = None
    """match_unseen's retain term: the retained rows' mean loss ("nll") or the KL divergence of the model's
    output distributions on them from the model as given ("kl": holds the model where it was instead of
    fitting the retained rows further). None: the method's default ("kl")."""
    unseen_hold: float = Field(default=0.0, ge=0)
    """match_unseen: weight of a term that holds the model's outputs on the calibration rows (the KL
    divergence from the model as given): forgetting must not move data the model never saw, or the bins that
    follow those rows' losses chase them. 0: off."""
    sam_rho: float | None = Field(default=None, ge=0)
    """match_unseen: sharpness-aware forgetting -- the forget term's gradient is taken at the worst weights
    within this distance (w + rho g/|g|), so that the forgetting holds on a neighbourhood of the weights
    (harder to undo by fine-tuning). 0: off; None: the method's default."""
    retain_weight: float = Field(default=1.0, ge=0)
    """Weight of the retain loss term (grad_diff, npo, scrub's gamma)."""
    beta: float = Field(default=0.1, gt=0)
    """NPO inverse temperature."""
    kl_weight: float = Field(default=1.0, ge=0)
    """SCRUB's alpha: weight of the teacher-student KL on the retain set."""
    temperature: float = Field(default=4.0, gt=0)
    """SCRUB distillation temperature."""
    forget_epochs: int | None = Field(default=None, ge=0)
    """SCRUB: epochs that start with a max-step on the forget set (None: half the epochs, at least 1)."""
    output_fn: Callable | None = None
    """SCRUB: ``output_fn(model, batch) -> logits`` (None: inferred, see methods.first_order)."""
    reference_model: Any = None
    """NPO reference / SCRUB teacher (None: a frozen copy of the model as given)."""
    model_init: Callable | None = None
    """retrain: ``model_init() -> nn.Module`` giving the starting point (None: re-initialised copy)."""

    # ---- distributed engine (dist_unlearn.distributed) --------------------------------------------------
    workers: int | None = Field(default=None, ge=1)
    """None: run in this process; N: run curvature methods on N Ray workers."""
    zero_stage: int = Field(default=0, ge=0, le=3)
    deepspeed_config: dict[str, Any] | str | None = None
    max_restarts: int = Field(default=3, ge=0)
    checkpoint_dir: str | None = None

    def __init__(self, **data: Any) -> None:
        reject_unknown("option", data.keys(), type(self).model_fields.keys())
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(_format(err)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in type(self).model_fields and not name.startswith("_"):
            reject_unknown("option", [name], type(self).model_fields.keys())
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise ConfigError(_format(err)) from None

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            reject_unknown("option", data.keys(), cls.model_fields.keys())
        return data

    @field_validator("M")
    @classmethod
    def _positive_M(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(
                "M is the cubic regularisation constant (a Hessian-Lipschitz bound) and must be > 0; "
                "use M=None for the automatic (ARC) choice"
            )
        return value

    @field_validator("max_example_passes")
    @classmethod
    def _finite_cap(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("max_example_passes must be a finite number > 0 (or None for no cap)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> UnlearnOptions:
        if self.arc_eta2 < self.arc_eta1:
            raise ValueError(f"arc_eta2={self.arc_eta2} must be >= arc_eta1={self.arc_eta1}")
        return self

    def check_method(self, method: str) -> None:
        """Raise ConfigError when an option the user gave is read by no part of ``method``.

        Example: ``finetune`` with ``damping`` (read by damped_newton only), ``cure_newton`` with ``lr``.
        """
        unread = [k for k in sorted(self.model_fields_set) if not reads(method, k)]
        if unread:
            parts = [f"{k!r} (read by {', '.join(readers(k))})" for k in unread]
            raise ConfigError(
                f"method {method!r} does not read the option{'s' if len(unread) > 1 else ''} "
                f"{'; '.join(parts)}. Remove {'them' if len(unread) > 1 else 'it'} or choose a method "
                "that reads it."
            )

    def with_defaults(self, defaults: dict[str, Any]) -> UnlearnOptions:
        """A copy where each option still None takes the value from ``defaults`` (method defaults)."""
        update = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if not update:
            return self
        data = {k: getattr(self, k) for k in self.model_fields_set}  # keeps "what the user gave"
        data.update(update)
        return type(self)(**data)

    def with_objective(self, curvature: bool) -> UnlearnOptions:
        """The curvature objective in force: with ``calibration`` and no ``objective`` given, the per-subject
        route (``match_unseen`` and the stop rule); first-order methods are returned unchanged.

        Raises:
            ConfigError: objective "match_unseen" without ``calibration``.
        """
        if not curvature:
            return self
        opts = self
        if self.calibration is not None and "objective" not in self.model_fields_set:
            opts = self.model_copy(update={"objective": "match_unseen"})
        if opts.objective == "match_unseen" and opts.calibration is None:
            raise ConfigError(
                "objective='match_unseen' moves each forget row into the loss distribution of data the model "
                "never saw: pass calibration=<Dataset of such rows> (kept apart from the data you judge on)."
            )
        return opts

    def public_dict(self) -> dict[str, Any]:
        """The options as JSON-friendly values (callables and models shown by type name)."""
        out: dict[str, Any] = {}
        for k in type(self).model_fields:
            v = getattr(self, k)
            if v is None or isinstance(v, bool | int | float | str):
                out[k] = v
            elif isinstance(v, dict):
                out[k] = dict(v)
            else:
                out[k] = f"<{type(v).__name__}>"
        return out


CUBIC = ("cure_newton", "cure_newton_stochastic")
CURVATURE = (*CUBIC, "damped_newton", "pinv_newton")
FIRST_ORDER = ("finetune", "grad_ascent", "grad_diff", "npo", "scrub", "match_unseen", "retrain")
FORGETTING = ("finetune", "grad_ascent", "grad_diff", "npo", "scrub", "match_unseen")
"""The first-order methods that take the forgetting stop rule (all but retraining)."""
EVERY = "every method"
_READERS: dict[str, tuple[str, ...] | str] = {
    **{
        k: EVERY
        for k in (
            "max_steps", "batch_size", "seed", "progress", "device", "collate_fn", "max_example_passes",
            # the distributed engine's options (first-order methods always run in-process)
            "workers", "zero_stage", "deepspeed_config", "max_restarts", "checkpoint_dir",
        )
    },
    **{
        k: CURVATURE
        for k in (
            "tol", "hvp", "krylov_tol", "krylov_max_iter", "reorthogonalize", "store_basis", "objective",
            "gradient", "grad_rtol", "step_rtol",
        )
    },
    **{
        k: (*CURVATURE, *FORGETTING)
        for k in (
            "calibration", "stop_auc_band", "forget_subjects", "calibration_subjects", "stop_within",
            "retain_tolerance", "unseen_tolerance",
        )
    },
    "bin_span": (*CURVATURE, "match_unseen"),
    "retain_loss": ("match_unseen",),
    "unseen_hold": ("match_unseen",),
    "stop_verbatim": ("match_unseen",),
    "sam_rho": ("match_unseen",),
    "stop_every": FORGETTING,
    **{
        k: CUBIC
        for k in (
            "M", "M_init", "M_min", "arc_eta1", "arc_eta2", "arc_shrink", "arc_grow", "max_rejections",
            "eig_iterations", "first_M_tries", "first_M_factor", "krylov_forcing",
        )
    },
    **{k: ("cure_newton",) for k in ("hvp_sample", "retain_sample")},
    **{k: CUBIC for k in ("reuse_curvature", "curvature_refresh")},
    **{
        k: ("cure_newton_stochastic",)
        for k in ("grad_batch_size", "hvp_batch_size", "cubic_solver", "cubic_lr")
    },
    "damping": ("damped_newton",),
    "rank": ("pinv_newton",),
    "threshold": ("pinv_newton",),
    **{k: FIRST_ORDER for k in ("lr", "epochs", "optimizer", "momentum", "weight_decay", "grad_clip")},
    "forget_weight": ("grad_ascent", "grad_diff", "npo", "match_unseen", *CURVATURE),
    "beta": ("npo", *CURVATURE),
    "retain_weight": ("grad_diff", "npo", "scrub", "match_unseen"),
    **{k: ("scrub",) for k in ("kl_weight", "temperature", "forget_epochs")},
    "output_fn": ("scrub", "match_unseen"),
    "reference_model": ("npo", "scrub"),
    "model_init": ("retrain",),
}  # fmt: skip
"""Which methods read each option (``forget_weight`` / ``beta``: the curvature methods' objectives)."""


def readers(option: str) -> list[str]:
    """The methods that read ``option`` (["every method"] for the shared ones)."""
    who = _READERS.get(option, EVERY)
    return [who] if isinstance(who, str) else list(who)


def reads(method: str, option: str) -> bool:
    """True when ``method`` reads ``option``."""
    who = _READERS.get(option, EVERY)
    return who == EVERY or method in who
