r"""Which rows does a causal LM still answer word for word, and by how much does each answer token lead?

A row's answer a_1..a_T (its ``labels`` that are not -100, the end-of-text token left out) is said verbatim
by greedy decoding exactly when every answer token is the model's top choice given the prompt and the true
answer before it: greedy decoding picks argmax_v p(v | prompt, a_{<t}) at each step, so it reproduces
a_1..a_t as long as each a_t wins, and departs at the first one that does not. The check therefore needs no
generation: one teacher-forced forward pass -- the same pass that gives the row's loss -- decides it. Per
answer token the *lead* is

    lead_t = z_t[a_t] - max_{v != a_t} z_t[v]        (z_t: the logits that predict position t),

and the row's lead is min_t lead_t: > 0 iff greedy decoding says the answer verbatim (ties aside). Why
``match_unseen`` needs it: moving a row's *mean* answer loss into the range of unseen rows' losses can leave
a few fact tokens (a locker code's digits) the top choice, so the row is still extracted word for word
although its loss looks unseen (benchmarks/RESULTS.md, "Does the job forget every subject of a request?").

- :func:`answer_leads`: min_t lead_t per row, from logits and labels;
- :func:`losses_and_leads`: per-example losses and leads from one forward pass (None for losses that are
  not next-token cross-entropy: the test is about generated text);
- :func:`verbatim_allowance`: how many forget rows may stay verbatim, from the rate among unseen rows;
- :func:`lead_penalty`: the hinge (1/2) max(lead + margin, 0)^2 that ``match_unseen`` adds (weight
  :data:`LEAD_WEIGHT`) for rows found verbatim at a stop check that only they kept from stopping (the
  weakest answer token only: the least change that stops the row being said word for word).
"""

from __future__ import annotations

import math
from typing import Any

import torch

LEAD_MARGIN = 1.0
"""Logits by which a verbatim row's weakest answer token is pushed below its runner-up: a token left just
under its rival (lead a hair below 0) flips back with the next steps on the retained rows."""

LEAD_WEIGHT = 0.1
"""Weight w of the lead term against the bin term (both per row, weighted v_i n_forget). Leads are logits
(a memorised token leads by several), so at w = 1 the term dominates the step: on people_qa one epoch of it
pushed the one flagged person past unseen data (audit: conspicuous), and retained exact answers on the LoRA
case fell 0.84 -> 0.78; w = 0.1 flips every flagged row in the same one epoch on both cases with neither
effect, w = 0.01 needs three to four epochs (benchmarks/results/cases_verbatim_stop.json)."""


def answer_leads(logits: torch.Tensor, labels: torch.Tensor, skip_token: int | None = None) -> torch.Tensor:
    """min over answer tokens of (logit of the true token - best other logit), one value per row.

    Args:
        logits: ``(B, L, V)`` next-token logits (position t predicts token t + 1).
        labels: ``(B, L)`` token ids, -100 where the position is not an answer token.
        skip_token: a token id left out of the answer (the end-of-text token: exact-match extraction compares
            the answer's words, not where generation stops).

    Returns:
        ``(B,)`` tensor in the logits' dtype (differentiable); -inf for a row without answer tokens (nothing
        to say verbatim).
    """
    target = labels.to(logits.device)[:, 1:]
    z = logits[:, :-1, :]
    mask = target != -100
    if skip_token is not None:
        mask = mask & (target != int(skip_token))
    safe = target.clamp_min(0)
    true = z.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    top2 = z.topk(2, dim=-1)
    first_is_true = top2.indices[..., 0] == safe
    other = torch.where(first_is_true, top2.values[..., 1], top2.values[..., 0])
    lead = torch.where(mask, true - other, torch.full_like(true, math.inf))
    row = lead.min(dim=1).values
    return torch.where(mask.any(dim=1), row, torch.full_like(row, -math.inf))


def supports_leads(loss_fn: Any) -> bool:
    """True for a next-token loss with ``outputs``, ``from_outputs`` and ``targets`` (``CausalLMLoss``)."""
    return all(callable(getattr(loss_fn, k, None)) for k in ("outputs", "from_outputs", "targets"))


def losses_and_leads(
    loss_fn: Any, model: torch.nn.Module, batch: Any, skip_token: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-example losses ``(n,)`` and answer leads ``(n,)`` from one forward pass; leads None when
    ``loss_fn`` is not a next-token loss (:func:`supports_leads`; the losses then come from
    :func:`~dist_unlearn.models.losses.per_example_losses`)."""
    from dist_unlearn.data.batches import batch_row
    from dist_unlearn.models.losses import per_example_losses

    if not supports_leads(loss_fn):
        return per_example_losses(loss_fn, model, batch), None
    logits = loss_fn.outputs(model, batch)
    n = logits.shape[0]
    losses = torch.stack([loss_fn.from_outputs(logits[i : i + 1], batch_row(batch, i, n)) for i in range(n)])
    return losses, answer_leads(logits, loss_fn.targets(batch), skip_token)


def end_token(model: torch.nn.Module) -> int | None:
    """The model's end-of-text token id (config ``eos_token_id``; None when it has none)."""
    from dist_unlearn.models.losses import unwrap

    eos = getattr(getattr(unwrap(model), "config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)


def verbatim_allowance(n_forget: int, unseen_rate: float) -> int:
    """Forget rows that may still be said verbatim: floor(n_forget x the unseen rows' verbatim rate).

    A model that never saw the subjects says some answers verbatim anyway (guessable ones: a common
    colour, a year); the unseen rows' rate is that level, and more verbatim forget rows than it predicts is
    the memorisation the request asks to remove. Rounded down: 30 rows at a 4% rate may keep one.
    """
    return int(math.floor(max(float(n_forget), 0.0) * max(float(unseen_rate), 0.0) + 1e-9))


def lead_penalty(leads: torch.Tensor, margin: float = LEAD_MARGIN) -> torch.Tensor:
    """(1/2) max(lead + margin, 0)^2 per row: zero once the weakest answer token trails its runner-up by
    ``margin`` logits, and rows without answer tokens (lead -inf) contribute nothing."""
    gap = torch.clamp(leads + margin, min=0.0)
    gap = torch.where(torch.isfinite(gap), gap, torch.zeros_like(gap))
    return 0.5 * gap * gap
