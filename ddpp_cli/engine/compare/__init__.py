"""``ddpp run --compare``: the paper's Table I for one dataset and IPC, every row under ONE
evaluation protocol (issue 16).

Each row makes (or reuses) a set and evaluates it with the plan's :class:`EvalConfig`: the same
architecture, epochs, lr rule, DSA, seeds and test images (the plan's ``test_subset``) for every
row; the coresets use the buffer's ZCA when the run whitens, so that the preprocessing is the
one the trajectory rows were distilled in.

- ``random``, ``herding``, ``forgetting``: coresets of :mod:`~ddpp_cli.engine.baselines`
  (``prepare_baseline`` → ``evaluate_baseline``);
- one row per distillation method of the registry (``distill.methods``; a record may list
  several): ``dc``, ``dsa``, ``dm``, ``cafe``: :func:`engine.distill.distill` with the method's
  resolution (no buffer: these methods match real images); ``mtt``, ``ddpp``: trajectory
  matching from the run's one buffer, ε = 0 and the plan's ε;
- ``full``: the whole training set (the coresets' data) trained under the protocol
  (``baselines.evaluate_full``), its runs cached in the data home and reused from there.

Each row's budget (iterations, epochs) comes from the profile (:class:`RowInfo`) and can be
overridden (:func:`parse_budgets`); the table says it and the row's other cuts (the quick
profile's ``batch_real``, CAFE's loop caps) next to the paper's values (:class:`Budget`).

Files: ``RUN/compare.md`` and ``RUN/compare.json`` (the table), and per row
``RUN/compare/<row>/``: ``row.json`` (settings, then the result), the set
(``set.safetensors`` for a coreset, a distillation run folder ``run/`` otherwise) and
``evaluations/`` (the evaluation records). A rerun reuses a finished row whose settings match;
a row of other settings is never overwritten (a Notice, and the row goes to ``<row>-2``, …); an
unfinished row continues: its distillation from the checkpoint, its evaluation from the records.

Modules, one job each: ``rows`` (the rows, ``--compare``/``--compare-budget``, budgets and cuts,
the configs a row runs), ``runners`` (:class:`RowJob`, the runners by kind, the settings a
reused row must share), ``table`` (results, ``compare.json``, ``compare.md``), ``events``, and
``run`` (:func:`compare`, folders and reuse). Every public name is importable from here.
"""

from ddpp_cli.engine.compare.events import (
    CompareStarted,
    EvaluationStarted,
    StepFinished,
    StepStarted,
)
from ddpp_cli.engine.compare.rows import (
    CUT_SETTINGS,
    KINDS,
    PAPER_LOOP_CAPS,
    ROWS,
    TABLE_I,
    UNCAPPED,
    Budget,
    Cut,
    RowInfo,
    matching_config,
    matching_cuts,
    method_rows,
    parse_budgets,
    parse_rows,
    quick_budgets_text,
    row_budgets,
    row_config,
    row_origin,
    trajectory_config,
)
from ddpp_cli.engine.compare.run import (
    ROW_FORMAT,
    ROW_NAME,
    ROWS_DIRNAME,
    check_compare_folder,
    compare,
    default_compare_folder,
    read_row,
    row_folder,
)
from ddpp_cli.engine.compare.runners import (
    RUN_DIRNAME,
    RUNNERS,
    SET_NAME,
    RowJob,
    RowRunner,
    coreset_config,
    full_config,
    row_settings,
    run_coreset_row,
    run_distilled_row,
    run_full_row,
)
from ddpp_cli.engine.compare.table import (
    FORMAT,
    JSON_NAME,
    MARKDOWN_NAME,
    PUBLISHED_HEADING,
    CompareSummary,
    RowResult,
    has_scores,
    markdown,
    protocol_text,
    published_sources,
    score_cells,
    scores_text,
    time_text,
)
from ddpp_cli.engine.published import Reference, reference

__all__ = [
    "CUT_SETTINGS",
    "FORMAT",
    "JSON_NAME",
    "KINDS",
    "MARKDOWN_NAME",
    "PAPER_LOOP_CAPS",
    "PUBLISHED_HEADING",
    "ROWS",
    "ROWS_DIRNAME",
    "ROW_FORMAT",
    "ROW_NAME",
    "RUNNERS",
    "RUN_DIRNAME",
    "SET_NAME",
    "TABLE_I",
    "UNCAPPED",
    "Budget",
    "CompareStarted",
    "CompareSummary",
    "Cut",
    "EvaluationStarted",
    "Reference",
    "RowInfo",
    "RowJob",
    "RowResult",
    "RowRunner",
    "StepFinished",
    "StepStarted",
    "check_compare_folder",
    "compare",
    "coreset_config",
    "default_compare_folder",
    "full_config",
    "has_scores",
    "markdown",
    "matching_config",
    "matching_cuts",
    "method_rows",
    "parse_budgets",
    "parse_rows",
    "protocol_text",
    "published_sources",
    "quick_budgets_text",
    "read_row",
    "reference",
    "row_budgets",
    "row_config",
    "row_folder",
    "row_origin",
    "row_settings",
    "run_coreset_row",
    "run_distilled_row",
    "run_full_row",
    "score_cells",
    "scores_text",
    "time_text",
    "trajectory_config",
]  # fmt: skip
