"""The unlearning job as a recipe: one named step per stage, each reading and filling one :class:`JobState`.

:func:`run_job` is the whole job, in order:

1. :func:`check_inputs`: everything that can be checked cheaply, so that a bad input fails in seconds with
   nothing loaded and nothing written: the config, the output folder, the model folder (config, weights,
   tokenizer), the data files and their columns, the forget selector against the data, the holdout (overlap
   with training warned), the holdout split, the number of workers against the cluster.
2. :func:`load_rows`: the model and tokenizer, the token rows split into retain / forget, the holdout split
   into calibration rows (the forgetting stop rule, :mod:`dist_unlearn.stopping`) and audit rows (the
   verdict's reference, :mod:`dist_unlearn.job.holdout`).
3. :func:`check_encoding`: a cheap forward pass that the training rows are fitted clearly better than the
   holdout under the configured format (:mod:`dist_unlearn.job.format_check`), then :func:`measure` the
   evidence before: every membership attack and (causal LMs) the greedy answers.
4. :func:`unlearn_rows` through the common engine: :func:`dist_unlearn.unlearn` in-process, or
   :func:`dist_unlearn.distributed.engine.run_distributed` on Ray workers (each worker loads the model from
   its path itself; ZeRO stage as configured).
5. :func:`measure` the evidence after (audit holdout rows only), then :func:`probe`: the robustness probes
   on copies of the unlearned model (:mod:`dist_unlearn.job.robustness`).
6. :func:`write_outputs`: the per-subject verdict (:func:`dist_unlearn.job.judge.job_verdict`), the model,
   ``forget_ids.txt``, the audit and the model card through :class:`dist_unlearn.output.OutputDir` (staged,
   committed at the end: a failed job leaves the output folder as it was).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from dist_unlearn.data.split import sample_rows
from dist_unlearn.errors import NumericalError
from dist_unlearn.job.config import JobConfig, as_job
from dist_unlearn.job.model import ModelSource

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


@dataclass
class JobState:
    """What one job carries from step to step (filled in as the steps run).

    Attributes:
        cfg: the validated job.yaml; log: where progress lines go; overwrite: ``--overwrite``.
        out: the output folder; src: the model folder's description; fmt: how rows become tokens.
        train / holdout: the data tables; overlap: holdout rows identical to training rows.
        selection: the forget rows (:class:`~dist_unlearn.data.files.ForgetSelection`).
        split: the holdout's calibration / audit parts; method: the method's registry entry.
        distributed: curvature method on Ray workers; engine_note: why workers were not used.
        rows: token rows by role: ``forget``, ``retain``, ``retain_sample`` (evidence), ``holdout`` (audit
            part), ``calibration`` (stop rule; None without one).
        model / tokenizer / pad_id: the loaded model (None while the workers hold it).
        before / after: the evidence records; stats: the method's statistics; options_record: the
            method and its options as the audit shows them.
        subjects: who each forget / holdout row is about (:mod:`dist_unlearn.job.subjects`).
        measured: ``before`` / ``after`` -> the per-row attack statistics and answers behind the records.
        audit_cost: the audit's own work (role ``audit``); probes: the robustness probes' record;
            format_check: the encoding check's record.
    """

    cfg: JobConfig
    log: Log
    overwrite: bool = False
    t0: float = field(default_factory=time.perf_counter)
    start_utc: str = ""
    out: Path | None = None
    src: ModelSource | None = None
    fmt: Any = None
    train: Any = None
    holdout: Any = None
    overlap: int | None = None
    selection: Any = None
    split: Any = None
    method: Any = None
    use_gpu: bool = False
    distributed: bool = False
    engine_note: str | None = None
    warnings: list[str] = field(default_factory=list)
    rows: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    tokenizer: Any = None
    pad_id: int = 0
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    options_record: dict[str, Any] = field(default_factory=dict)
    subjects: Any = None
    measured: dict[str, Any] = field(default_factory=dict)
    audit_cost: Any = None
    probes: dict[str, Any] | None = None
    format_check: dict[str, Any] | None = None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def now_utc() -> str:
    """The current time, ISO 8601 in UTC (seconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_job(
    config: JobConfig | dict | str | Path, *, overwrite: bool = False, log: Log | None = None
) -> JobResult:
    """Run an unlearning job (the steps of the module docstring) and write its outputs.

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
    job = JobState(cfg=as_job(config), log=log or _stderr, overwrite=overwrite, start_utc=now_utc())
    check_inputs(job)
    connected = connect_workers(job)
    try:
        load_rows(job)
        check_encoding(job)
        job.before = measure(job, "before")
        unlearn_rows(job)
        job.after = measure(job, "after")
    finally:
        if connected:
            import ray

            ray.shutdown()
    probe(job)
    record = write_outputs(job)
    return JobResult(output_dir=job.out, audit=record, model=job.model)


def check_inputs(job: JobState) -> None:
    """Step 1: every cheap check (module docstring); fills tables, selection, split and method."""
    from dist_unlearn.job.checks import check_holdout, check_layout, check_training_data
    from dist_unlearn.job.holdout import split_for_job
    from dist_unlearn.job.model import inspect_model
    from dist_unlearn.methods import get_method
    from dist_unlearn.output import check_output_dir

    cfg = job.cfg
    job.out = check_output_dir(cfg.output_dir, overwrite=job.overwrite)
    job.src = inspect_model(cfg.model, cfg.base_model)
    check_layout(cfg, job.src)
    job.fmt = cfg.data.text_format()
    job.train, job.selection = check_training_data(cfg, job.fmt)
    if cfg.holdout is not None:
        job.holdout, job.overlap = check_holdout(cfg, job.fmt, job.train, job.log, job.warnings)
    job.method = get_method(cfg.method.name)
    import torch

    job.use_gpu = torch.cuda.is_available()
    job.distributed = cfg.workers is not None and job.method.curvature
    if cfg.workers is not None and not job.method.curvature:
        job.engine_note = f"{cfg.method.name} is a first-order method: it ran in-process (workers not used)"
        job.log(f"note: {job.engine_note}")
    if job.distributed:
        from dist_unlearn.preflight import check_deepspeed_config

        check_deepspeed_config(cfg.deepspeed_config, cfg.zero_stage)
    job.split = split_for_job(cfg, job.holdout)
    from dist_unlearn.cost import CostCounter
    from dist_unlearn.job.subjects import resolve_subjects

    job.subjects = resolve_subjects(cfg, job.train, job.selection, job.holdout)
    job.audit_cost = CostCounter()


def connect_workers(job: JobState) -> bool:
    """The worker count against the cluster (:func:`dist_unlearn.job.checks.check_workers`).

    Returns:
        True when this call connected to Ray (the caller shuts it down).
    """
    from dist_unlearn.job.checks import check_workers

    workers = job.cfg.workers if job.distributed else None
    return check_workers(workers, job.use_gpu, oversubscribe=job.cfg.oversubscribe)


def load_rows(job: JobState) -> None:
    """Step 2: the model, the tokenizer and the token rows of every role (:class:`JobState` ``rows``)."""
    from dist_unlearn.data.tokenize import tokenize_rows
    from dist_unlearn.job.model import load_job_model, load_tokenizer
    from dist_unlearn.models import check_tokenizer

    cfg, src = job.cfg, job.src
    job.tokenizer = load_tokenizer(src)
    job.log(f"loading {src.task} model {str(src.path)!r}" + (" (LoRA adapter)" if src.adapter else ""))
    job.model = load_job_model(src, cfg.dtype)
    check_tokenizer(job.model, job.tokenizer)
    tok = job.tokenizer
    job.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    kw = {"label2id": src.label2id, "num_labels": src.num_labels}
    rows = tokenize_rows(job.train, tok, job.fmt, what="data", **kw)
    forget_set = set(job.selection.indices)
    retain = rows.select([i for i in range(len(rows)) if i not in forget_set])
    holdout = (
        tokenize_rows(job.holdout, tok, job.fmt, what="holdout", **kw) if job.holdout is not None else None
    )
    calibration = None
    if holdout is not None and job.split.calibration:
        calibration = holdout.select(job.split.calibration)
        holdout = holdout.select(job.split.audit)
    job.rows = {
        "forget": rows.select(job.selection.indices),
        "retain": retain,
        "retain_sample": retain.select(sample_rows(len(retain), cfg.retain_sample, cfg.seed)),
        "holdout": holdout,
        "calibration": calibration,
    }


def check_encoding(job: JobState) -> None:
    """Step 3a: refuse when the training rows are not fitted clearly better than the holdout
    (:func:`dist_unlearn.job.format_check.check_format`)."""
    from dist_unlearn.job.format_check import check_format

    job.format_check = check_format(job)


def measure(job: JobState, when: str) -> dict[str, Any]:
    """Steps 3 and 5: the evidence at the model's current weights (forget, retain sample, audit holdout):
    every attack's statistics and, for a causal LM with ``audit.extraction``, the greedy answers to the
    forget, audit-holdout and (``audit.extraction_retain_rows``) retained prompts."""
    from dist_unlearn.job.evidence import evidence_record, extraction_sets, measure_model

    rows = job.rows
    sets = {"forget": rows["forget"], "retain": rows["retain_sample"], "holdout": rows["holdout"]}
    sets["calibration"] = rows["calibration"]  # never seen: its subjects steady the design effect's estimate
    if when == "before":
        calibration = rows["calibration"]
        job.log(
            f"evidence before: {len(rows['forget'])} forget, {len(rows['retain_sample'])} retain-sample, "
            f"{0 if rows['holdout'] is None else len(rows['holdout'])} holdout (audit) rows"
            + (f", {len(calibration)} calibration rows for the stop rule" if calibration is not None else "")
        )
    m = measure_model(
        job.model,
        sets,
        job.src.task,
        tokenizer=job.tokenizer,
        pad_id=job.pad_id,
        batch_size=job.cfg.eval_batch_size,
        extraction=extraction_sets(rows, job.cfg.audit, job.src.task),
        cost=job.audit_cost,
    )
    job.measured[when] = m
    ev = evidence_record(m)
    if when == "after" and not all(math.isfinite(x) for x in ev["losses"]["forget"]):
        raise NumericalError("the unlearned model gives non-finite forget losses; nothing was written.")
    return ev


def probe(job: JobState) -> None:
    """Step 5b: the robustness probes on copies of the unlearned model (:func:`dist_unlearn.job.robustness
    .run_probes`); the delivered model is not touched."""
    from dist_unlearn.job.robustness import run_probes

    job.probes = run_probes(job)


def method_options(job: JobState) -> dict[str, Any]:
    """The options the method runs with: the job's, plus collation, seed and the stop rule's rows."""
    from dist_unlearn.data import pad_collate

    opts = job.cfg.method_options()
    opts.setdefault("collate_fn", pad_collate(job.pad_id))
    opts.setdefault("seed", job.cfg.seed)
    if job.rows["calibration"] is not None:
        opts["calibration"] = job.rows["calibration"]
    from dist_unlearn.job.subjects import subject_options

    opts.update(subject_options(job, opts))
    return opts


def unlearn_rows(job: JobState) -> None:
    """Step 4: run the method (in-process or on the workers); ``job.model`` becomes the unlearned model."""
    cfg, name = job.cfg, job.cfg.method.name
    opts = method_options(job)
    initial = {n: p.detach().clone() for n, p in job.model.named_parameters() if p.requires_grad}
    job.log(
        f"unlearning with {name}"
        + (f" on {cfg.workers} workers, ZeRO-{cfg.zero_stage}" if job.distributed else "")
    )
    if job.distributed:
        from dist_unlearn.distributed.engine import run_distributed
        from dist_unlearn.job.model import model_kwargs
        from dist_unlearn.options import UnlearnOptions

        opts.update(workers=cfg.workers, zero_stage=cfg.zero_stage)
        if cfg.deepspeed_config is not None:
            opts["deepspeed_config"] = cfg.deepspeed_config
        job.model = None  # each worker loads the model from its path; the driver loads the result once
        res = run_distributed(
            str(job.src.path),
            None,
            job.rows["retain"],
            job.rows["forget"],
            name,
            UnlearnOptions(**opts),
            model_kwargs=model_kwargs(job.src, cfg.dtype),
        )
        res.model.eval()
    else:
        import dist_unlearn

        res = dist_unlearn.unlearn(
            job.model, None, job.rows["retain"], job.rows["forget"], method=name, **opts
        )
    job.model = res.model
    job.stats = dict(res.stats)
    hidden = ("calibration", "forget_subjects", "calibration_subjects")
    shown = {k: v for k, v in (job.stats.get("options") or {}).items() if k not in hidden}
    if job.rows["calibration"] is not None:
        n = len(job.rows["calibration"])
        shown["calibration"] = f"{n} holdout rows (request.holdout.split.calibration_ids)"
    if opts.get("forget_subjects") is not None:
        shown["forget_subjects"] = "the subject of each forget row (subjects in audit.json)"
    job.options_record = {"name": name, "given": cfg.method_options(), "options": shown}
    final = dict(job.model.named_parameters())
    job.stats["update_norm"] = math.sqrt(
        sum(float((final[k].detach().double() - v.double()).pow(2).sum()) for k, v in initial.items())
    )


def write_outputs(job: JobState) -> dict[str, Any]:
    """Step 6: verdict, model, ids file, audit and model card, staged and committed at once.

    Returns:
        The audit record (with the evidence, without the per-example losses).
    """
    from dist_unlearn.job.audit import model_card, strip_losses, write_audit
    from dist_unlearn.job.judge import verdict_of
    from dist_unlearn.job.record import audit_record
    from dist_unlearn.models import save_model
    from dist_unlearn.output import OutputDir
    from dist_unlearn.provenance import weight_file_hashes, write_ids_file

    verdict = verdict_of(job)
    job.log(f"verdict: {verdict['status']}. {verdict['sentence']}")
    with OutputDir(job.out, overwrite=job.overwrite, command="unlearn") as od:
        save_model(job.model, od.stage / "model", tokenizer=job.tokenizer)
        if job.src.adapter and job.cfg.merged:
            merged = copy.deepcopy(job.model).merge_and_unload()
            save_model(merged, od.stage / "model" / "merged", tokenizer=job.tokenizer)
        ids = write_ids_file(od.stage / "forget_ids.txt", job.selection.ids)
        ids["path"] = str(job.out / "forget_ids.txt")
        outputs = {"path": str(job.out / "model"), "weight_sha256": weight_file_hashes(od.stage / "model")}
        record = audit_record(job, verdict, ids, outputs, end_utc=now_utc())
        write_audit(od.stage, record, job.before, job.after)
        (od.stage / "model" / "README.md").write_text(model_card(record))
        od.commit()
    record["evidence"] = {"before": strip_losses(job.before), "after": strip_losses(job.after)}
    return record
