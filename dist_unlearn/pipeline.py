"""One experiment end to end, as a readable recipe.

    config -> task data -> forget split (R rounds) -> train the original model (cached per config hash)
           -> per round: retrain the oracle on the retain set (cached) -> each method via
           dist_unlearn.unlearn,
              starting from that method's model of the previous round -> evaluate against the oracle
           -> results.json + report + final models

Sequential unlearning (``forget.rounds = R > 1``): the forget set is cut into R disjoint chunks (random,
seeded);
round r forgets chunk r with retain = train minus chunks 0..r, and the oracle of round r is retrained on that
retain set. Round 1 of 1 is ordinary batch unlearning.

Outputs go through :mod:`dist_unlearn.output`: a non-empty output directory is refused unless
``overwrite`` (and then only what an earlier run wrote is replaced); everything is staged in a hidden folder
and moved into place only when the whole run succeeded, so a failed run leaves no half-written results,
reports or models (the model cache, written file by file atomically, survives to speed up the next try).
Every path, device and worker count is checked (:mod:`dist_unlearn.preflight`) before anything is trained.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dist_unlearn.config import ExperimentConfig, ForgetConfig
from dist_unlearn.errors import ConfigError, DataError, DistUnlearnError, OutputError
from dist_unlearn.eval import measure_resources
from dist_unlearn.eval.results import to_jsonable
from dist_unlearn.output import OutputDir, check_output_dir
from dist_unlearn.tasks import Task, get_task
from dist_unlearn.tasks.base import TrainRecipe, atomic_torch_save

Log = Callable[[str], None]


@dataclass
class Round:
    """One round of forgetting: unlearn ``forget`` keeping ``retain``; ``forgotten`` = all chunks so far."""

    index: int
    retain: Any
    forget: Any
    forgotten: Any


def plan_rounds(train: Any, forget: ForgetConfig) -> list[Round]:
    """Resolve the forget config against the training set (``dist_unlearn.data.split_forget``) into rounds."""
    from dist_unlearn.data import split_forget

    spec = {
        k: getattr(forget, k)
        for k in ("ids", "label", "fraction", "ids_file")
        if getattr(forget, k) is not None
    }
    if forget.fraction is not None:
        spec["seed"] = forget.seed
    if forget.group_column is not None:
        if forget.group_column not in train.column_names:
            raise DataError(
                f"forget.group_column={forget.group_column!r} is not a column of the training data "
                f"(columns: {train.column_names})"
            )
        groups = np.asarray(train[forget.group_column])
        uniq = np.unique(groups)
        k = int(round(forget.fraction * len(uniq)))
        if k == 0 or k == len(uniq):
            raise DataError(
                f"forget.fraction={forget.fraction} of {len(uniq)} groups of "
                f"{forget.group_column!r} is {k} groups; need between 1 and {len(uniq) - 1}"
            )
        chosen = np.random.default_rng(forget.seed).choice(uniq, size=k, replace=False)
        spec = {"ids": [int(i) for i in np.asarray(train["id"])[np.isin(groups, chosen)]]}
    full = split_forget(train, spec, label_column=forget.label_column)
    forget_idx = np.asarray(full.forget_indices)
    if forget.rounds > len(forget_idx):
        raise DataError(f"forget.rounds={forget.rounds} exceeds the forget set size {len(forget_idx)}")
    if forget.rounds == 1:
        return [Round(0, full.retain, full.forget, full.forget)]
    chunks = np.array_split(np.random.default_rng(forget.seed).permutation(forget_idx), forget.rounds)
    rounds, gone = [], np.zeros(len(train), dtype=bool)
    for r, chunk in enumerate(chunks):
        gone[chunk] = True
        rounds.append(
            Round(
                r,
                retain=train.select(np.flatnonzero(~gone).tolist()),
                forget=train.select(sorted(chunk.tolist())),
                forgotten=train.select(np.flatnonzero(gone).tolist()),
            )
        )
    return rounds


def numeric_view(dataset: Any) -> Any:
    """The dataset without text columns (what the oracle and the training loops batch)."""
    from dist_unlearn.data.batches import numeric_columns

    return dataset.select_columns(numeric_columns(dataset))


# ----- outputs: dist_unlearn.output (staging dir, manifest, --overwrite) ----------------------------
class ModelCache:
    """Trained models keyed by a hash of everything that determines them (``<out>/cache/<key>.pt``)."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root, self.enabled = root, enabled

    def get_or_train(
        self,
        key: str,
        task: Task,
        dataset: Any,
        recipe: TrainRecipe,
        *,
        seed: int,
        progress: bool,
        desc: str,
        log: Log,
    ) -> tuple[torch.nn.Module, dict[str, float]]:
        """(trained model, resources of the run that trained it: wall/cpu time, peak memory; also when
        cached, as recorded then)."""
        path = self.root / f"{key}.pt"
        model = task.build_model()
        if self.enabled and path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state"])
            log(f"{desc}: loaded from cache {path} (trained in {blob['times']['wall_time_s']:.1f} s)")
            times = dict(blob["times"])
            times.setdefault("cost", task.training_cost(len(dataset), recipe))
            return model.eval(), times
        with measure_resources() as usage:
            task.train(model, dataset, recipe, seed=seed, progress=progress, desc=desc)
        times = usage.as_dict()
        times["cost"] = task.training_cost(len(dataset), recipe)  # example passes (dist_unlearn.cost)
        log(f"{desc}: trained in {times['wall_time_s']:.1f} s on {len(dataset)} examples")
        if self.enabled:
            atomic_torch_save({"state": model.state_dict(), "times": times}, path)
        return model.eval(), times


def train_cost(recipe: TrainRecipe, n_examples: int) -> dict[str, Any]:
    """Example passes of training on ``n_examples`` rows for ``recipe.epochs`` epochs (1 per example per
    epoch, :mod:`dist_unlearn.cost`), the same whether the model was trained now or loaded from the cache."""
    from dist_unlearn.cost import CostCounter

    counter = CostCounter()
    steps = recipe.epochs * -(-n_examples // recipe.batch_size)
    counter.add("train_step", recipe.epochs * n_examples, calls=steps)
    return counter.as_dict()


def validate_methods(cfg: ExperimentConfig) -> None:
    """Check every method name and its options before anything is trained (ConfigError with a suggestion)."""
    from dist_unlearn.methods import get_method
    from dist_unlearn.options import UnlearnOptions

    for i, m in enumerate(cfg.methods):
        try:
            get_method(m.name)
            UnlearnOptions(**cfg.method_options(m))
        except ConfigError as exc:
            raise ConfigError(f"methods[{i}] ({m.display}): {exc}") from None


# ----- the experiment --------------------------------------------------------------------------------------
def run_experiment(
    cfg: ExperimentConfig,
    *,
    out_dir: str | Path | None = None,
    use_cache: bool = True,
    log: Log | None = None,
    overwrite: bool = False,
    command: str = "dist-unlearn run",
) -> dict[str, Any]:
    """Run ``cfg`` and write ``results.json``, ``report.md`` (+ plots, ``config.yaml`` appendix),
    ``forget_ids.txt`` and ``models/<method>/`` to the output dir.

    Args:
        cfg: the experiment.
        out_dir: output directory (default ``cfg.output_dir``); must be empty or new unless ``overwrite``.
        use_cache: reuse trained original/oracle models from ``<out>/cache``.
        log: where log lines go (default: tqdm.write).
        overwrite: replace the outputs of an earlier run there (never files dist_unlearn did not write).
        command: the command line recorded in the provenance.

    Returns:
        The results dictionary written to ``results.json``.

    Raises:
        ConfigError / DataError / NumericalError / OutputError: the run stops and nothing is written but
        cache. Output, path, device and worker problems are raised before anything is trained.
    """
    from dist_unlearn.api import unlearn
    from dist_unlearn.eval.evidence import evidence_of, verdict_record, warn_verdict
    from dist_unlearn.preflight import check_experiment

    log = log or (lambda msg: tqdm.write(msg))
    validate_methods(cfg)
    out = check_output_dir(out_dir or cfg.output_dir, overwrite=overwrite)
    for warning in check_experiment(cfg):
        log(f"WARNING {warning}")
    task = get_task(cfg.task.name)(cfg.task.params, seed=cfg.seed)
    recipe = task.recipe(cfg.train.model_dump())
    data = task.data()
    rounds = plan_rounds(data.train, cfg.forget)
    progress = cfg.progress
    bs = cfg.eval.batch_size

    experiment: dict[str, Any] = {
        "name": cfg.name,
        "task": cfg.task.name,
        "kind": task.kind,
        "level": cfg.forget.level,
        "rounds": len(rounds),
        "n_train": len(data.train),
        "n_test": len(data.test),
        "n_forget_total": sum(len(r.forget) for r in rounds),
        "workers": cfg.workers,
        "zero_stage": cfg.zero_stage if cfg.workers else None,
        "recipe": dict(recipe.__dict__),
        "config": cfg.model_dump(mode="json"),
    }
    round_records: list[dict[str, Any]] = []
    with OutputDir(out, overwrite=overwrite, command=command) as od:
        cache = ModelCache(od.claim("cache") if use_cache else out / "cache", enabled=use_cache)
        base_key = f"original-{cfg.task.name}-{cfg.hash('task', 'train')}"
        original, t_orig = cache.get_or_train(
            base_key,
            task,
            data.train,
            recipe,
            seed=cfg.seed,
            progress=progress,
            desc="train original",
            log=log,
        )
        experiment["train_original"] = t_orig
        current = {m.display: original for m in cfg.methods}
        for rnd in rounds:
            tag = f"round {rnd.index + 1}/{len(rounds)}" if len(rounds) > 1 else "retrain oracle"
            oracle_key = f"oracle-{cfg.task.name}-{cfg.hash('task', 'train', 'forget')}-r{rnd.index}"
            oracle, t_retrain = cache.get_or_train(
                oracle_key,
                task,
                rnd.retain,
                recipe,
                seed=cfg.seed,
                progress=progress,
                desc=f"{tag}: retrain",
                log=log,
            )
            splits = {"retain": rnd.retain, "forget": rnd.forgotten, "test": data.test}
            reference = task.reference(oracle, **splits, batch_size=bs)

            def evaluate(model: torch.nn.Module, splits: dict = splits, reference: Any = reference) -> dict:
                return task.evaluate(model, **splits, oracle=reference, original=original, batch_size=bs)

            def evidence(model: torch.nn.Module, rnd: Round = rnd) -> dict:
                return evidence_of(task, model, rnd.forgotten, data.test, batch_size=bs)

            before, oracle_ev = evidence(original), evidence(oracle)
            verdicts = {
                "original": verdict_record(before, before=None, reference=oracle_ev),
                "retrain": {"evidence": oracle_ev, "vs_retrained": None, "vs_unseen": None},
            }
            methods: dict[str, Any] = {
                "original": {
                    "metrics": evaluate(original),
                    "resources": t_orig,
                    "stats": {
                        "role": "model before unlearning (trained on everything)",
                        "cost": train_cost(recipe, len(data.train)),
                    },
                },
                "retrain": {
                    "metrics": {**evaluate(oracle), "time_fraction_of_retrain": 1.0},
                    "resources": t_retrain,
                    "stats": {
                        "role": "oracle: retrained from scratch on the retain set",
                        "cost": train_cost(recipe, len(rnd.retain)),
                    },
                },
            }
            for m in tqdm(cfg.methods, desc=f"{tag}: methods", disable=not progress, leave=False):
                opts = cfg.method_options(m)
                opts.setdefault("seed", cfg.seed)
                opts.setdefault("progress", progress)
                start = copy.deepcopy(current[m.display])
                log(f"{tag}: {m.display} {opts}")
                with measure_resources() as usage:
                    res = unlearn(
                        start,
                        task.loss_fn,
                        numeric_view(rnd.retain),
                        numeric_view(rnd.forget),
                        method=m.name,
                        **opts,
                    )
                current[m.display] = res.model
                metrics = evaluate(res.model)
                metrics["time_fraction_of_retrain"] = usage.wall_time_s / t_retrain["wall_time_s"]
                methods[m.display] = {
                    "metrics": metrics,
                    "steps": res.steps,
                    "resources": usage,
                    "stats": {"method": m.name, "options": opts, **res.stats},
                }
                verdicts[m.display] = verdict_record(evidence(res.model), before=before, reference=oracle_ev)
                warn_verdict(m.display, verdicts[m.display], log)
                log(f"{tag}: {m.display} done in {usage.wall_time_s:.2f} s, ToW={metrics.get('tow')}")
            round_records.append(
                {
                    "round": rnd.index,
                    "n_retain": len(rnd.retain),
                    "n_forget": len(rnd.forget),
                    "n_forgotten": len(rnd.forgotten),
                    "retrain": t_retrain,
                    "methods": methods,
                    "verdicts": verdicts,
                }
            )
        experiment["retrain"] = round_records[-1]["retrain"]
        results = {
            "experiment": experiment,
            "methods": round_records[-1]["methods"],
            "verdicts": round_records[-1]["verdicts"],
            "rounds": round_records if len(rounds) > 1 else [],
        }
        results = _write_outputs(results, od.stage, cfg, task, current, rounds[-1].forgotten, command)
        od.commit()
    return results


def _write_outputs(
    results: dict,
    stage: Path,
    cfg: ExperimentConfig,
    task: Task,
    models: dict,
    forgotten: Any,
    command: str,
) -> dict:
    """Models, forgotten ids, results.json, config appendix and report into the staging folder (moved into
    place by ``OutputDir.commit``); returns the results as written."""
    from dist_unlearn.eval import write_results
    from dist_unlearn.provenance import provenance, weight_file_hashes, write_ids_file

    saved: dict[str, Any] = {}
    if cfg.eval.save_models:
        for name, model in tqdm(models.items(), desc="save models", disable=not cfg.progress, leave=False):
            folder = stage / "models" / _safe(name)
            try:
                task.save(model, folder)
            except DistUnlearnError:
                raise
            except OSError as exc:
                raise OutputError(f"cannot save model of {name!r}: {exc}") from exc
            saved[name] = {"path": f"models/{_safe(name)}", "sha256": weight_file_hashes(folder)}
    ids = write_ids_file(stage / "forget_ids.txt", list(forgotten["id"]))
    results["experiment"]["forgotten_ids"] = {**ids, "path": "forget_ids.txt"}
    results["experiment"]["saved_models"] = saved
    results["provenance"] = provenance(
        {"command": command, "workers": cfg.workers, "zero_stage": cfg.zero_stage if cfg.workers else None}
    )
    results = to_jsonable(results, strict=False)
    write_results(results, stage)
    (stage / "config.yaml").write_text(_yaml_dump(cfg.model_dump(mode="json")))
    if cfg.eval.report:
        from dist_unlearn.eval import write_report

        write_report(results, stage)
    return results


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _yaml_dump(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
