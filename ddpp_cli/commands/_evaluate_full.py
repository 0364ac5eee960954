"""``ddpp evaluate --baseline full``: the whole training set (or ``--train-subset N``) under the
protocol, its runs cached in the data home: which options apply, its config and the engine call."""

from __future__ import annotations

from pathlib import Path

from ddpp_cli.commands._settings import settings
from ddpp_cli.engine import baselines, coresets, evaluate
from ddpp_cli.engine.errors import DdppError

FULL = "full"
FULL_HELP = "full (the whole training set, or --train-subset N; no --ipc; its runs are cached)"
# --baseline full's data options, named after the FullConfig field they set.
FULL_SETTINGS = ("dataset", "train_subset", "image_size", "channels", "seed", "buffer")
# What --baseline full refuses, and why (parameter name -> the reason).
NOT_FOR_FULL = {
    "ipc": "it trains on the whole training set; pass --train-subset N for fewer images",
    "save": "the whole training set is the dataset itself; nothing to save",
    "force": "there is no --save file to replace",
    "records": "its runs are kept in its cache under the data home",
    "no_records": "its cache is what the scores and tables reuse",
}


def is_full(baseline: str | None) -> bool:
    """Whether ``--baseline`` asks for the whole training set."""
    return baseline is not None and baseline.strip().lower() == FULL


def check_full_options(options: dict) -> None:
    """DdppError (one line) for an option ``--baseline full`` does not take."""
    for name, why in NOT_FOR_FULL.items():
        if options[name] is not None and options[name] is not False:
            flag = "--" + name.replace("_", "-")
            raise DdppError(f"{flag} does not apply to --baseline full: {why}.")
    for name in coresets.coreset_options():
        if options[name] is not None and options[name] is not False:
            flag = "--" + name.replace("_", "-")
            owner = coresets.owner(name).name
            raise DdppError(f"{flag} does not apply to --baseline full (only to {owner}).")
    if options["dataset"] is None:
        raise DdppError("--baseline full needs --dataset D.")


def full_config_of(options: dict) -> baselines.FullConfig:
    """The FullConfig of ``--baseline full`` and its data options."""
    given = settings({name: options[name] for name in FULL_SETTINGS}, FULL_SETTINGS)
    return baselines.FullConfig(zca=False if options["no_zca"] else None, **given)


def evaluate_full_set(
    options: dict, config: evaluate.EvalConfig, display, data_options: dict, run: dict
) -> tuple[evaluate.EvalResult, str, dict, Path]:
    """Evaluate the whole training set: the result, the table's title, the ``--json`` payload
    and the cache folder."""
    full_config = full_config_of(options)
    run = {key: value for key, value in run.items() if key != "records"}
    with display.progress:
        found = baselines.evaluate_full(
            full_config, config, on_event=display, **data_options, **run
        )
    result = found.result
    subset = full_config.train_subset
    images = f"{subset} training images" if subset else "the whole training set"
    title = f"Evaluation on {images} ({result.protocol['dataset']})"
    payload = {"set": None, "cache": str(found.folder), **result.to_json()}
    return result, title, payload, found.folder
