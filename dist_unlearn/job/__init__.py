"""The user's unlearning job: their fine-tuned model + their training data + a forget selector -> an
unlearned model and an audit record (``dist-unlearn unlearn --config job.yaml``).

- :mod:`.config`: the job.yaml schema (:class:`JobConfig`, :data:`DEFAULT_METHOD`);
- :mod:`.model`: checking and loading the model folder (causal LM, classifier, peft adapter);
- :mod:`.evidence`: per-example losses -> forget / retain / holdout evidence;
- :mod:`.audit`: audit.json, audit.md, the loss plot, the model card;
- :mod:`.recipe`: :func:`run_job`, the whole job in one function.
"""

from dist_unlearn.job.config import DEFAULT_METHOD, JobConfig, load_job, parse_job
from dist_unlearn.job.recipe import JobResult, run_job

__all__ = ["DEFAULT_METHOD", "JobConfig", "JobResult", "load_job", "parse_job", "run_job"]
