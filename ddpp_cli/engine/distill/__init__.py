"""Distillation (``ddpp distill``): MTT trajectory matching with DDPP parameter pruning
(docs/distill.md),
and, with ``config.method``, the comparison methods DC, DSA, DM and CAFE (docs/methods.md),
which share the run folder, checkpoints, validation, guards and summary (``methods``).

State: synthetic images X (K·IPC, C, H, W), class-major hard labels, and a learnable step size α.
Each iteration picks an expert (shuffled, cycling) and a start epoch i, unrolls a student from
θ_i for N steps on augmented minibatches of X (keeping the graph), prunes the parameters whose
end value and the target θ_{i+M} are difficult to match, and backpropagates the normalised
matching loss over the kept parameters into X and α (SGD, momentum 0.5 on both).

A run folder holds ``distilled.safetensors`` (the current set), ``checkpoint.safetensors``
(everything needed to continue bit for bit), ``metrics.jsonl`` (one line per iteration),
``best.safetensors`` (the set with the best validation accuracy) and ``summary.json`` (the final
result). All randomness comes from three CPU generators derived from the seed (expert order,
start epochs, minibatches and DSA draws), whose states are checkpointed; evaluation runs are
seeded on their own. The engine never prints: progress goes to ``on_event``.

Modules, one job each: ``methods`` (the registry of methods: one record per ``--method``, one
module per family), ``config`` (the settings, checked against the method's record),
``resolution`` (preset → profile → saved run → options, and the resume rule), ``buffer`` (where
the buffer is and whether it fits), ``state`` (:class:`DistillState` and its checkpoint form),
``files`` (the run folder's files), ``setup`` (buffer, data, validation split, student), ``step``
(tm's iteration and the guards), ``validation`` (held-out split, validation, the final test),
``events``, and ``run`` (the loop).
"""

from ddpp_cli.engine import presets as presets  # the CLI reads presets.KEYS through here
from ddpp_cli.engine.distill.buffer import buffer_command, check_buffer, find_buffer
from ddpp_cli.engine.distill.config import (
    CHANGEABLE_ON_RESUME,
    INITS,
    METHOD_PRESET_FIELDS,
    METHOD_SETTINGS,
    METHODS,
    DistillConfig,
    lighter_unroll,
    method_preset,
    not_applicable,
)
from ddpp_cli.engine.distill.events import (
    CheckpointSaved,
    DistillStarted,
    DistillSummary,
    DivergedError,
    IterationFinished,
    TestFinished,
    TestStarted,
    ValidationFinished,
    ValidationStarted,
)
from ddpp_cli.engine.distill.files import (
    BEST_NAME,
    CHECKPOINT_NAME,
    DISTILLED_NAME,
    METRICS_NAME,
    SNAPSHOTS_DIRNAME,
    SUMMARY_NAME,
    RunFolder,
    default_run_dir,
    read_checkpoint,
)
from ddpp_cli.engine.distill.methods import (
    DEFAULT_METHOD,
    MethodInfo,
    MethodStep,
    get_method,
    list_methods,
)
from ddpp_cli.engine.distill.resolution import (
    ALL_IMAGES,
    RESOLVED_AT_START,
    Resolved,
    check_options,
    resolve,
    resume_config,
    saved_config,
)
from ddpp_cli.engine.distill.run import distill, summary_json
from ddpp_cli.engine.distill.setup import RunSetup, set_up, set_up_method
from ddpp_cli.engine.distill.state import GENERATORS, Best, DistillState, StateDict
from ddpp_cli.engine.distill.step import MatchingStep, divergence, read_snapshots
from ddpp_cli.engine.distill.validation import MAX_VAL_SIZE, Validation, split_validation
from ddpp_cli.engine.model_selection import SELECTION_HELP, SELECTIONS, get_selection
from ddpp_cli.engine.student import UnrollStep, plan_unroll
from ddpp_cli.engine.unroll import unroll

__all__ = [
    "ALL_IMAGES",
    "BEST_NAME",
    "CHANGEABLE_ON_RESUME",
    "CHECKPOINT_NAME",
    "DEFAULT_METHOD",
    "DISTILLED_NAME",
    "GENERATORS",
    "INITS",
    "MAX_VAL_SIZE",
    "METHODS",
    "METHOD_PRESET_FIELDS",
    "METHOD_SETTINGS",
    "METRICS_NAME",
    "RESOLVED_AT_START",
    "SELECTIONS",
    "SELECTION_HELP",
    "SNAPSHOTS_DIRNAME",
    "SUMMARY_NAME",
    "Best",
    "CheckpointSaved",
    "DistillConfig",
    "DistillStarted",
    "DistillState",
    "DistillSummary",
    "DivergedError",
    "IterationFinished",
    "MatchingStep",
    "MethodInfo",
    "MethodStep",
    "Resolved",
    "RunFolder",
    "RunSetup",
    "StateDict",
    "TestFinished",
    "TestStarted",
    "UnrollStep",
    "Validation",
    "ValidationFinished",
    "ValidationStarted",
    "buffer_command",
    "check_buffer",
    "check_options",
    "default_run_dir",
    "distill",
    "divergence",
    "find_buffer",
    "get_method",
    "get_selection",
    "lighter_unroll",
    "list_methods",
    "method_preset",
    "not_applicable",
    "plan_unroll",
    "read_checkpoint",
    "read_snapshots",
    "resolve",
    "resume_config",
    "saved_config",
    "set_up",
    "set_up_method",
    "split_validation",
    "summary_json",
    "unroll",
]
