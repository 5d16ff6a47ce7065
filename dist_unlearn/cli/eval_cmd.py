"""`dist-unlearn eval`: re-evaluate the saved models of a run against the retrained oracle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dist_unlearn.cli import cli, verbose_option

Log = Callable[[str], None]


@cli.command("eval")
@verbose_option
@click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The YAML config the run used.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory of the run (default: the config's output_dir).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="Evaluate this saved model (repeatable); default: every folder in <run-dir>/models.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where eval.json goes (default: the run directory).",
)
@click.option("--overwrite", is_flag=True, help="Replace an eval.json an earlier dist-unlearn eval wrote.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_cmd_command(
    config_path: str,
    run_dir: str | None,
    models: tuple[str, ...],
    out_dir: str | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Metrics of saved models vs the oracle retrained without the forget set; writes <run-dir>/eval.json."""
    from dist_unlearn.cli.logs import output_mode
    from dist_unlearn.cli.run import print_results_table
    from dist_unlearn.config import load_config
    from dist_unlearn.errors import DistUnlearnError

    named = {}
    for item in models:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} is not NAME=PATH", param_hint="--model")
        named[name] = path
    with output_mode(quiet=quiet):
        try:
            cfg = load_config(config_path, {"progress": False} if quiet else None)
            out = evaluate_saved(
                cfg,
                run_dir or cfg.output_dir,
                named or None,
                log=(lambda msg: None) if quiet else None,
                out_dir=out_dir,
                overwrite=overwrite,
            )
        except DistUnlearnError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    print_results_table(out, title=f"{cfg.name}: saved models vs retrained oracle")


def evaluate_saved(
    cfg: Any,
    run_dir: str | Path,
    models: dict[str, str | Path] | None = None,
    *,
    log: Log | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Re-evaluate saved models of a run (``<run_dir>/models/*`` or ``models``) against the last round's
    oracle.

    The oracle comes from the run's cache (retrained when absent). Writes ``eval.json`` into ``out_dir``
    (default ``run_dir``) through :mod:`dist_unlearn.output`: a new name in a directory of ours is added,
    an existing eval.json is replaced only with ``overwrite``; checked before anything is evaluated.
    """
    from tqdm.auto import tqdm

    from dist_unlearn.errors import DataError
    from dist_unlearn.eval.results import to_jsonable
    from dist_unlearn.output import OutputDir, check_output_dir
    from dist_unlearn.pipeline import ModelCache, plan_rounds
    from dist_unlearn.tasks import get_task

    log = log or (lambda msg: tqdm.write(msg))
    run_dir = Path(run_dir)
    dest = check_output_dir(out_dir or run_dir, overwrite=overwrite, will_write=["eval.json"])
    with OutputDir(dest, overwrite=overwrite, command="dist-unlearn eval", will_write=["eval.json"]) as od:
        if models is None:
            mdir = run_dir / "models"
            if not mdir.is_dir():
                raise DataError(
                    f"no saved models in {str(mdir)!r}: give --model NAME=PATH or run with save_models"
                )
            models = {p.name: p for p in sorted(mdir.iterdir()) if p.is_dir()}
        task = get_task(cfg.task.name)(cfg.task.params, seed=cfg.seed)
        recipe = task.recipe(cfg.train.model_dump())
        data = task.data()
        rnd = plan_rounds(data.train, cfg.forget)[-1]
        # the run's cache; recorded in the manifest when eval creates it in the folder it writes to
        cache_dir = run_dir / "cache"
        if od.path == run_dir.resolve() and not cache_dir.exists():
            cache_dir = od.claim("cache")
        cache = ModelCache(cache_dir)
        original, _ = cache.get_or_train(
            f"original-{cfg.task.name}-{cfg.hash('task', 'train')}",
            task,
            data.train,
            recipe,
            seed=cfg.seed,
            progress=cfg.progress,
            desc="train original",
            log=log,
        )
        oracle, t_retrain = cache.get_or_train(
            f"oracle-{cfg.task.name}-{cfg.hash('task', 'train', 'forget')}-r{rnd.index}",
            task,
            rnd.retain,
            recipe,
            seed=cfg.seed,
            progress=cfg.progress,
            desc="retrain oracle",
            log=log,
        )
        splits = {"retain": rnd.retain, "forget": rnd.forgotten, "test": data.test}
        reference = task.reference(oracle, **splits, batch_size=cfg.eval.batch_size)
        kw = dict(**splits, oracle=reference, original=original, batch_size=cfg.eval.batch_size)
        out: dict[str, Any] = {
            "experiment": {
                "name": cfg.name,
                "task": cfg.task.name,
                "kind": task.kind,
                "retrain": t_retrain,
                "evaluated": "saved models",
            },
            "methods": {
                "original": {"metrics": task.evaluate(original, **kw)},
                "retrain": {"metrics": task.evaluate(oracle, **kw), "resources": t_retrain},
            },
        }
        for name, path in tqdm(models.items(), desc="evaluate", disable=not cfg.progress, leave=False):
            out["methods"][name] = {
                "metrics": task.evaluate(task.load(path), **kw),
                "stats": {"path": str(path)},
            }
        out = to_jsonable(out, strict=False)
        (od.stage / "eval.json").write_text(json.dumps(out, indent=2))
        od.commit()
    return out
