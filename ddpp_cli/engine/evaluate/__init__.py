"""Evaluation (``ddpp evaluate``, ``ddpp crossarch``): train fresh networks on a set of images, test
each once, N runs (docs/evaluation.md).

Each run trains a freshly initialised network of any registered architecture on the set, then
makes one pass over the test split, which must be transformed exactly as the set was (same
normalisation, or the same ZCA). Accuracies are fractions in [0, 1]; ``std`` is the population
standard deviation (``np.std``, ddof 0), as in the papers' tables. The engine never prints:
progress goes to ``on_event`` as :class:`NetworkStarted`, :class:`NetworkEpochFinished` and
:class:`NetworkFinished` (and :class:`events.Notice`).

``parallel=K`` trains K runs of one architecture at once as one vmapped model (:mod:`batched`);
every run keeps its own streams, so the accuracies equal one-at-a-time training up to float
rounding. Under ``torchrun`` (``world``) the runs are split between the ranks and gathered.

Modules, one job each: ``protocol`` (:class:`EvalConfig`, :class:`EvalResult`, the training and
test of one network), ``records`` (the finished runs kept for a rerun, and their folder),
``events``, ``parallel`` (several networks at once, torchrun), ``runs`` (the runs of one
evaluation) and ``sets`` (a set file's test split, :func:`evaluate_set`, :func:`crossarch`).
Every public name is importable from here.
"""

from ddpp_cli.engine.evaluate.events import NetworkEpochFinished, NetworkFinished, NetworkStarted
from ddpp_cli.engine.evaluate.protocol import (
    DEFAULT_LR,
    HARD_LABELS_TEXT,
    LABEL_CHOICES,
    LR_DECAY,
    SELECTION_RULE,
    STD_KIND,
    EvalConfig,
    EvalResult,
    SetForRun,
    chosen_vectors,
    labels_text,
    measure_accuracy,
    protocol_record,
    resolve_lr,
    summarize,
    train_and_test,
)
from ddpp_cli.engine.evaluate.records import (
    RECORDS_FORMAT,
    RUN_SET_NAMES,
    EvalRecords,
    FinishedRuns,
    default_records_dir,
    evaluation_identity,
    tensor_digest,
)
from ddpp_cli.engine.evaluate.runs import evaluate_images, evaluate_per_run
from ddpp_cli.engine.evaluate.sets import (
    crossarch,
    evaluate_set,
    find_set,
    load_test_split,
    set_vectors,
    take_test_subset,
)

__all__ = [
    "DEFAULT_LR",
    "HARD_LABELS_TEXT",
    "LABEL_CHOICES",
    "LR_DECAY",
    "RECORDS_FORMAT",
    "RUN_SET_NAMES",
    "SELECTION_RULE",
    "STD_KIND",
    "EvalConfig",
    "EvalRecords",
    "EvalResult",
    "FinishedRuns",
    "NetworkEpochFinished",
    "NetworkFinished",
    "NetworkStarted",
    "SetForRun",
    "chosen_vectors",
    "crossarch",
    "default_records_dir",
    "evaluate_images",
    "evaluate_per_run",
    "evaluate_set",
    "evaluation_identity",
    "find_set",
    "labels_text",
    "load_test_split",
    "measure_accuracy",
    "protocol_record",
    "resolve_lr",
    "set_vectors",
    "summarize",
    "take_test_subset",
    "tensor_digest",
    "train_and_test",
]
