"""Log-friendly progress (no carriage returns, one line per step) and `-q` filters on library loggers."""

from __future__ import annotations

import io
import logging

import pytest


def test_plain_progress_prints_one_line_per_step_without_carriage_returns():
    import tqdm.auto

    from dist_unlearn.cli.logs import output_mode

    original = tqdm.auto.tqdm
    buf = io.StringIO()
    with output_mode(plain=True):
        bar = tqdm.auto.tqdm(total=5, desc="cure_newton", unit="step", leave=False, file=buf)
        for k in range(5):
            bar.set_postfix(loss=f"{1.0 / (k + 1):.3f}")
            bar.update(1)
        bar.close()
    assert tqdm.auto.tqdm is original  # restored
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"cure_newton: {k}/5 step" for k in range(6)]
    assert lines[-1].endswith("(loss=0.200)")


def test_plain_progress_throttles_long_bars():
    import tqdm.auto

    from dist_unlearn.cli.logs import output_mode

    buf = io.StringIO()
    with output_mode(plain=True):
        for _ in tqdm.auto.tqdm(range(1000), desc="train", file=buf):
            pass
    lines = buf.getvalue().splitlines()
    assert 2 <= len(lines) <= 5  # start, maybe a few timed lines, the end; not 1000
    assert lines[-1].startswith("train: 1000/1000")


def test_pipeline_module_tqdm_is_swapped_and_restored():
    import dist_unlearn.pipeline as pipeline
    from dist_unlearn.cli.logs import output_mode

    before = pipeline.tqdm
    with output_mode(plain=True):
        assert pipeline.tqdm is not before and pipeline.tqdm.__name__ == "PlainProgress"
    assert pipeline.tqdm is before


@pytest.mark.parametrize(
    ("name", "source"), [("ray", "ray"), ("DeepSpeed", "DeepSpeed"), ("ray", "ray._private.worker")]
)
def test_quiet_drops_library_warnings_and_restores(name, source):
    """Records of the library logger, and of its children through the library's own handler."""
    from dist_unlearn.cli.logs import output_mode

    logger = logging.getLogger(name)
    child = logging.getLogger(source)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        with output_mode(quiet=True, plain=False):
            child.warning("chatter")
            child.error("a real error")
        child.warning("after")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["a real error", "after"]


def test_long_step_shows_the_lanczos_count(monkeypatch):
    """Inside one outer step (damped Newton: one long solve) the HVP count appears in the log."""
    from dist_unlearn.cli.logs import _plain_class, output_mode
    from dist_unlearn.methods.step_log import watch_hvps as _watch_hvps

    monkeypatch.setattr(_plain_class(), "min_interval", 0.0)

    class Oracle:
        def hvp(self, v):
            return 2 * v

    oracle = Oracle()
    buf = io.StringIO()
    with output_mode(plain=True):
        import tqdm.auto

        bar = tqdm.auto.tqdm(total=1, desc="damped_newton", unit="step", file=buf)
        stop = _watch_hvps(oracle, bar)
        assert [oracle.hvp(k) for k in range(3)] == [0, 2, 4]  # the products are unchanged
        stop()
        bar.update(1)
        bar.close()
    assert "hvp" not in vars(oracle)  # unwrapped
    lines = buf.getvalue().splitlines()
    assert any(line.startswith("damped_newton: 0/1 step") and "Lanczos/HVP 3" in line for line in lines)
    assert lines[-1].startswith("damped_newton: 1/1 step")
