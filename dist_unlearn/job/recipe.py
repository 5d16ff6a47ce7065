"""The unlearning job, end to end in one readable function: :func:`run_job`.

1. Check everything that can be checked cheaply, so that a bad input fails in seconds with nothing written:
   the config, the output folder, the model folder (config, weights, tokenizer), the data files and their
   columns, the forget selector against the data, the holdout (overlap with training warned), the number of
   workers against the cluster.
2. Load the model and tokenizer, tokenise the rows, split retain / forget, split the holdout into
   calibration rows (the forgetting stop rule, :mod:`dist_unlearn.stopping`) and audit rows (the verdict's
   reference, :mod:`dist_unlearn.job.holdout`), measure the evidence before.
3. Unlearn through the common engine: :func:`dist_unlearn.unlearn` in-process, or
   :func:`dist_unlearn.distributed.engine.run_distributed` on Ray workers (each worker loads the model from
   its path itself; ZeRO stage as configured).
4. Measure the evidence after, decide the verdict (:func:`dist_unlearn.eval.verdict.decide`), and write the
   model, ``forget_ids.txt``, the audit and the model card through :class:`dist_unlearn.output.OutputDir`
   (staged, committed at the end: a failed job leaves the output folder as it was).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from dist_unlearn.data.files import count_overlap, load_table, require_columns, select_forget
from dist_unlearn.errors import ConfigError, NumericalError
from dist_unlearn.job.config import JobConfig, as_job
from dist_unlearn.job.model import ModelSource, inspect_model

Log = Callable[[str], None]


@dataclass
class JobResult:
    """What a job produced.

    Attributes:
        output_dir: the folder written (``model/``, ``audit.json``, ``audit.md``, the plot,
            ``forget_ids.txt``).
        audit: the audit record (as in ``audit.json``, without the per-example losses).
        model: the unlearned model (in memory).
    """

    output_dir: Path
    audit: dict[str, Any]
    model: nn.Module

    @property
    def verdict(self) -> dict[str, Any]:
        """``{"status", "sentence", "thresholds", ...}``."""
        return self.audit["verdict"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def path_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (sorted relative paths and their sha256, one per line)."""
    from dist_unlearn.output import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    lines = [f"{f.relative_to(p).as_posix()} {sha256_file(f)}\n" for f in sorted(p.rglob("*")) if f.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def check_workers(workers: int | None, use_gpu: bool, *, oversubscribe: bool = False) -> bool:
    """Raise ConfigError when ``workers`` exceeds what the cluster has (``preflight.check_workers``).

    With ``RAY_ADDRESS`` set (e.g. under ``ray job submit``) the cluster is joined first, so its size is
    what is checked; otherwise this machine's cores (GPUs), which the embedded Ray gets.

    Returns:
        True when this call connected to Ray (the caller shuts it down).
    """
    if workers is None:
        return False
    from dist_unlearn.preflight import check_workers as preflight_workers

    started = False
    if os.environ.get("RAY_ADDRESS"):
        from dist_unlearn.distributed.startup import ensure_ray

        started = ensure_ray(workers)
    try:
        preflight_workers(workers, use_gpu=use_gpu, oversubscribe=oversubscribe)
    except ConfigError:
        if started:
            import ray

            ray.shutdown()
        raise
    return started


def _check_layout(cfg: JobConfig, src: ModelSource) -> None:
    fmt = cfg.data.text_format()
    if fmt.task != src.task:
        hint = (
            "give data.label_column with data.text_column"
            if src.task == "classification"
            else "give data.text_column alone, or prompt_column + response_column"
        )
        raise ConfigError(
            f"the model {cfg.model!r} is a {src.task} model but the data layout {fmt.kind!r} trains a "
            f"{fmt.task} model; {hint}."
        )


def _sample(n: int, k: int, seed: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False))


def run_job(
    config: JobConfig | dict | str | Path, *, overwrite: bool = False, log: Log | None = None
) -> JobResult:
    """Run an unlearning job (see the module docstring) and write its outputs.

    Args:
        config: a :class:`~dist_unlearn.job.config.JobConfig`, a mapping, or the path of job.yaml.
        overwrite: replace what an earlier job wrote in ``output_dir`` (never other files).
        log: progress lines (default: stderr).

    Returns:
        :class:`JobResult`.

    Raises:
        ConfigError, DataError, ModelError, OutputError: bad input, before expensive work, nothing written.
        NumericalError, DistributedError: the run failed; nothing written.
    """
    log = log or _stderr
    cfg = as_job(config)
    t0, start_utc = time.perf_counter(), _now()
    from dist_unlearn.methods import get_method
    from dist_unlearn.output import OutputDir, check_output_dir

    # ---- 1. cheap checks ---------------------------------------------------------------------------------
    out = check_output_dir(cfg.output_dir, overwrite=overwrite)
    src = inspect_model(cfg.model, cfg.base_model)
    _check_layout(cfg, src)
    fmt = cfg.data.text_format()
    train = load_table(cfg.data.path, what="data")
    require_columns(train, fmt.columns(), what=f"data {cfg.data.path!r}")
    if "id_column" in cfg.data.model_fields_set:
        require_columns(train, {"id_column": cfg.data.id_column}, what=f"data {cfg.data.path!r}")
    sel = select_forget(train, **cfg.forget.selector(), id_column=cfg.data.id_column, what="data")
    warn: list[str] = []
    holdout = overlap = None
    if cfg.holdout is not None:
        holdout = load_table(cfg.holdout, what="holdout")
        require_columns(holdout, fmt.columns(), what=f"holdout {cfg.holdout!r}")
        content = [c for k, c in fmt.columns().items() if k != "label_column"]
        overlap = count_overlap(train, holdout, content)
        if overlap:
            msg = (
                f"{overlap} of the {len(holdout)} holdout rows are identical to training rows (on "
                f"{content}); the holdout should be data the model never saw, so the verdict is lenient."
            )
            warnings.warn(msg, stacklevel=2)
            warn.append(msg)
            log(f"warning: {msg}")
    spec = get_method(cfg.method.name)
    import torch

    use_gpu = torch.cuda.is_available()
    distributed = cfg.workers is not None and spec.curvature
    engine_note = None
    if cfg.workers is not None and not spec.curvature:
        engine_note = f"{cfg.method.name} is a first-order method: it ran in-process (workers not used)"
        log(f"note: {engine_note}")
    if distributed:
        from dist_unlearn.preflight import check_deepspeed_config

        check_deepspeed_config(cfg.deepspeed_config, cfg.zero_stage)
    from dist_unlearn.job.holdout import split_for_job

    split = split_for_job(cfg, spec.curvature, holdout)
    connected = check_workers(cfg.workers if distributed else None, use_gpu, oversubscribe=cfg.oversubscribe)
    try:
        result, record = _run(cfg, src, fmt, train, holdout, split, sel, distributed, log)
    finally:
        if connected:
            import ray

            ray.shutdown()

    # ---- 4. write ----------------------------------------------------------------------------------------
    model, tok, before, after, stats = result
    from dist_unlearn.eval.verdict import decide
    from dist_unlearn.job.audit import model_card, utility_checks, write_audit
    from dist_unlearn.provenance import provenance, weight_file_hashes, write_ids_file

    verdict = decide(after, before=before)
    verdict["before_status"] = decide(before)["status"]
    with OutputDir(out, overwrite=overwrite, command="unlearn") as od:
        from dist_unlearn.models import save_model

        save_model(model, od.stage / "model", tokenizer=tok)
        if src.adapter and cfg.merged:
            merged = copy.deepcopy(model).merge_and_unload()
            save_model(merged, od.stage / "model" / "merged", tokenizer=tok)
        ids = write_ids_file(od.stage / "forget_ids.txt", sel.ids)
        ids["path"] = str(out / "forget_ids.txt")
        end_utc = _now()
        record["request"]["forget"]["ids_file"] = ids
        if holdout is not None:
            record["request"]["holdout"] = {
                "path": str(cfg.holdout),
                "sha256": path_sha256(cfg.holdout),
                "rows": len(holdout),
                "overlap_with_training": overlap,
                "split": split.record if split is not None else None,
            }
        record["model"]["output"] = {
            "path": str(out / "model"),
            "weight_sha256": weight_file_hashes(od.stage / "model"),
        }
        cost = stats.get("cost")
        record["run"].update(
            {
                "workers": stats.get("workers") if distributed else None,
                "zero_stage": stats.get("zero_stage", cfg.zero_stage) if distributed else None,
                "engine_note": engine_note,
                "start_utc": start_utc,
                "end_utc": end_utc,
                "wall_time_s": time.perf_counter() - t0,
                "unlearn_wall_time_s": stats.get("wall_time"),
                "cost": cost,
                "num_steps": stats.get("num_steps"),
                "accepted_steps": stats.get("accepted_steps"),
                "stop_reason": stats.get("stop_reason"),
                "update_norm": stats.get("update_norm"),
                "hvp_mode": stats.get("hvp_mode"),
                "stop_rule": stats.get("stop_rule"),
                "stop_checks": stats.get("stop_checks"),
            }
        )
        record["verdict"] = verdict
        record["checks"] = utility_checks(before, after)
        record["warnings"] = warn
        if holdout is None:
            record["not_checked"] = [
                "whether the forget rows are still recognisable: no holdout (data the model never saw) was "
                "given, so no forget-vs-holdout AUC or KS test could be computed (status "
                "unknown_without_holdout).",
                "no forgetting stop rule: it needs unseen calibration rows, which come from the holdout; the "
                "run stopped on its own rules (stop_reason in run).",
            ]
        elif split is not None and not split.record["stop_rule"]:
            record["not_checked"] = [f"no forgetting stop rule: {split.record['why']}"]
        record["provenance"] = provenance({"workers": record["run"]["workers"], "use_gpu": use_gpu})
        write_audit(od.stage, record, before, after)
        (od.stage / "model" / "README.md").write_text(model_card(record))
        od.commit()
    from dist_unlearn.job.audit import strip_losses

    record["evidence"] = {"before": strip_losses(before), "after": strip_losses(after)}
    return JobResult(output_dir=out, audit=record, model=model)


def _run(cfg, src, fmt, train, holdout, split, sel, distributed, log):
    """Steps 2 and 3: load, tokenise, evidence before, unlearn, evidence after (audit holdout rows only)."""
    from dist_unlearn.data import pad_collate
    from dist_unlearn.data.tokenize import tokenize_rows
    from dist_unlearn.job.evidence import evidence
    from dist_unlearn.job.model import load_job_model, load_tokenizer, model_kwargs
    from dist_unlearn.models import check_tokenizer

    tok = load_tokenizer(src)
    log(f"loading {src.task} model {str(src.path)!r}" + (" (LoRA adapter)" if src.adapter else ""))
    model = load_job_model(src, cfg.dtype)
    check_tokenizer(model, tok)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    kw = {"label2id": src.label2id, "num_labels": src.num_labels}
    rows = tokenize_rows(train, tok, fmt, what="data", **kw)
    forget_set = set(sel.indices)
    retain_idx = [i for i in range(len(rows)) if i not in forget_set]
    forget_rows, retain_rows = rows.select(sel.indices), rows.select(retain_idx)
    holdout_rows = tokenize_rows(holdout, tok, fmt, what="holdout", **kw) if holdout is not None else None
    calibration = None
    if holdout_rows is not None and split.calibration:
        calibration = holdout_rows.select(split.calibration)
        holdout_rows = holdout_rows.select(split.audit)
    sets = {
        "forget": forget_rows,
        "retain": retain_rows.select(_sample(len(retain_rows), cfg.retain_sample, cfg.seed)),
        "holdout": holdout_rows,
    }
    ev_kw = {"pad_id": pad, "batch_size": cfg.eval_batch_size}
    log(
        f"evidence before: {len(forget_rows)} forget, {len(sets['retain'])} retain-sample, "
        f"{0 if holdout_rows is None else len(holdout_rows)} holdout (audit) rows"
        + (f", {len(calibration)} calibration rows for the stop rule" if calibration is not None else "")
    )
    before = evidence(model, sets, src.task, **ev_kw)
    record: dict[str, Any] = {
        "format": "dist_unlearn.audit/1",
        "request": {
            "data": {
                "path": str(cfg.data.path),
                "sha256": path_sha256(cfg.data.path),
                "rows": len(train),
                "layout": fmt.kind,
                "columns": fmt.columns(),
                "max_length": fmt.max_length,
            },
            "forget": {"selector": sel.selector, "rows": len(sel.indices), "id_source": sel.id_source},
            "retain_rows": len(retain_rows),
            "holdout": None,
        },
        "model": {
            "input": {
                "path": str(src.path),
                "kind": src.task,
                "adapter": src.adapter,
                "base_model": str(src.base) if src.adapter else None,
                "weight_sha256": _input_hashes(src),
            }
        },
        "run": {},
    }
    method = cfg.method.name
    opts = cfg.method_options()
    opts.setdefault("collate_fn", pad_collate(pad))
    opts.setdefault("seed", cfg.seed)
    if calibration is not None:
        opts["calibration"] = calibration
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    log(
        f"unlearning with {method}"
        + (f" on {cfg.workers} workers, ZeRO-{cfg.zero_stage}" if distributed else "")
    )
    if distributed:
        from dist_unlearn.distributed.engine import run_distributed
        from dist_unlearn.options import UnlearnOptions

        opts.update(workers=cfg.workers, zero_stage=cfg.zero_stage)
        if cfg.deepspeed_config is not None:
            opts["deepspeed_config"] = cfg.deepspeed_config
        del model  # each worker loads the model from its path; the driver loads the result once
        res = run_distributed(
            str(src.path),
            None,
            retain_rows,
            forget_rows,
            method,
            UnlearnOptions(**opts),
            model_kwargs=model_kwargs(src, cfg.dtype),
        )
        res.model.eval()
    else:
        import dist_unlearn

        res = dist_unlearn.unlearn(model, None, retain_rows, forget_rows, method=method, **opts)
    out_model = res.model
    stats = dict(res.stats)
    shown = {k: v for k, v in (stats.get("options") or {}).items() if k != "calibration"}
    if calibration is not None:
        shown["calibration"] = f"{len(calibration)} holdout rows (request.holdout.split.calibration_ids)"
    record["method"] = {"name": method, "given": cfg.method_options(), "options": shown}
    final = dict(out_model.named_parameters())
    stats["update_norm"] = math.sqrt(
        sum(float((final[k].detach().double() - v.double()).pow(2).sum()) for k, v in initial.items())
    )
    after = evidence(out_model, sets, src.task, **ev_kw)
    if not all(math.isfinite(x) for x in after["losses"]["forget"]):
        raise NumericalError("the unlearned model gives non-finite forget losses; nothing was written.")
    return (out_model, tok, before, after, stats), record


def _input_hashes(src: ModelSource) -> dict[str, str]:
    from dist_unlearn.provenance import weight_file_hashes

    hashes = weight_file_hashes(src.path)
    if src.adapter:
        hashes.update({f"base/{k}": v for k, v in weight_file_hashes(src.base).items()})
    return hashes
