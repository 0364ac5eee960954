"""``ddpp evaluate``: train fresh networks on a distilled set (or a baseline coreset), test them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ddpp_cli.commands import _options as opt
from ddpp_cli.commands._display import err, line, out, print_result, set_label
from ddpp_cli.commands._evaluation import (
    BatchOpt,
    DsaOpt,
    EpochsOpt,
    EvalDisplay,
    LrOpt,
    NoRecordsOpt,
    RecordsOpt,
    RunsOpt,
    SetOrRunArgument,
    ZcaFileOpt,
    eval_config,
    records_dir,
    records_line,
)
from ddpp_cli.engine import (
    baselines,
    data,
    distilled,
    evaluate,
    models,
    store,
    trajectory,
)
from ddpp_cli.engine.device import resolve_device
from ddpp_cli.engine.distributed import join_world
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.progress import make_progress

BASELINE_ONLY = ("dataset", "ipc", "train_subset", "save", "no_zca", "force")
TRAINING = ("runs", "epochs", "lr", "batch_size", "dsa", "seed")


ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="Network to train (default: the set's, else convnet)."),
]

BaselineOpt = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        help="Evaluate a coreset of real images instead: random or herding.",
        rich_help_panel=opt.BASELINE,
    ),
]

BaselineDatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        "-d",
        help=f"Baseline dataset: {', '.join(data.available())}.",
        rich_help_panel=opt.BASELINE,
    ),
]

BaselineIpcOpt = Annotated[
    int | None,
    typer.Option("--ipc", help="Baseline images per class.", rich_help_panel=opt.BASELINE),
]

NoZcaOpt = Annotated[
    bool,
    typer.Option(
        "--no-zca",
        help="Baseline: normalise instead of ZCA (the non-CIFAR default).",
        rich_help_panel=opt.BASELINE,
    ),
]

BaselineSubsetOpt = Annotated[
    int | None,
    typer.Option(
        "--train-subset",
        help="Baseline: pick from a stratified subset of N images.",
        rich_help_panel=opt.BASELINE,
    ),
]

SaveOpt = Annotated[
    Path | None,
    typer.Option(
        "--save",
        help="Baseline: also write the coreset as a distilled-set file.",
        rich_help_panel=opt.BASELINE,
    ),
]

ForceSaveOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Baseline: replace the --save file (and its .zca file) if they exist.",
        rich_help_panel=opt.BASELINE,
    ),
]


def command(
    target: SetOrRunArgument = None,
    arch: ArchOpt = None,
    runs: RunsOpt = 5,
    epochs: EpochsOpt = 1000,
    lr: LrOpt = None,
    batch_size: BatchOpt = 256,
    dsa: DsaOpt = True,
    zca_file: ZcaFileOpt = None,
    baseline: BaselineOpt = None,
    dataset: BaselineDatasetOpt = None,
    ipc: BaselineIpcOpt = None,
    no_zca: NoZcaOpt = False,
    train_subset: BaselineSubsetOpt = None,
    save: SaveOpt = None,
    force: ForceSaveOpt = False,
    records: RecordsOpt = None,
    no_records: NoRecordsOpt = False,
    data_dir: opt.DataDirOpt = None,
    download: opt.DownloadOpt = True,
    test_subset: opt.TestSubsetOpt = None,
    parallel: opt.ParallelOpt = 1,
    device: opt.DeviceOpt = "auto",
    seed: opt.SeedOpt = 0,
    json_out: opt.JsonOpt = False,
    quiet: opt.quiet_option("mean ± std (and the coreset file with --save)") = False,
) -> None:
    """Train fresh networks on a distilled set (or a baseline coreset) and test them.

    Under torchrun the ranks split the runs; rank 0 prints.
    """
    options = dict(locals())
    _check_target(target, baseline, {name: options[name] for name in BASELINE_ONLY})
    training = {name: options[name] for name in TRAINING}
    world, torch_device = join_world(resolve_device(device))
    progress = make_progress(err, disable=quiet or not world.is_main)
    data_options = {"data_root": data_dir, "download": download, "zca_path": zca_file}
    data_options["test_subset"] = test_subset
    records_at = records_dir(target, records, no_records, quiet)
    display = EvalDisplay(progress)
    run = {"device": torch_device, "parallel": parallel, "world": world, "records": records_at}
    saved, zca_written = None, None
    if baseline is None:
        path = evaluate.find_set(target)
        distilled_set = distilled.load(path)
        default_arch = distilled_set.arch if distilled_set.arch in models.available() else "convnet"
        config = eval_config(arch or default_arch, **training)
        title = f"Evaluation of {set_label(path, distilled_set)} on {torch_device}"
        with progress:
            result = evaluate.evaluate_set(
                distilled_set, config, on_event=display, **data_options, **run
            )
        payload = {"set": str(path), **result.to_json()}
    else:
        if save is not None:  # before any work: nothing the user made is replaced silently
            store.refuse_existing(save, _zca_beside(save), force=force)
        baseline_config = baselines.BaselineConfig(
            method=baseline.strip().lower(), dataset=dataset, ipc=ipc,
            zca=False if no_zca else None, train_subset=train_subset, seed=seed,
        )  # fmt: skip
        config = eval_config(arch or "convnet", **training)
        result, saved, zca_written = _evaluate_baseline(
            baseline_config, config, save, display, data_options, run
        )
        title = (
            f"Evaluation of the {baseline_config.method} baseline "
            f"({result.protocol['dataset']}, IPC {ipc})"
        )
        payload = {"set": None if saved is None else str(saved), **result.to_json()}
    if world.is_main:
        _report(title, result, payload, saved, zca_written, json_out=json_out, quiet=quiet)
        if not (json_out or quiet) and records_at is not None:
            line(out, records_line(records_at, display))


def _check_target(target: Path | None, baseline: str | None, baseline_only: dict) -> None:
    """DdppError unless exactly one of a set and a complete --baseline is asked for."""
    if baseline is None:
        given = [
            "--" + name.replace("_", "-")
            for name, value in baseline_only.items()
            if value is not None and value is not False
        ]
        if given:
            raise DdppError(f"{', '.join(given)} only apply with --baseline random|herding.")
        if target is None:
            raise DdppError(
                "nothing to evaluate: pass a distilled-set file or run folder, or "
                "--baseline random|herding --dataset D --ipc K."
            )
    elif target is not None:
        raise DdppError(f"pass either a set ({target}) or --baseline, not both.")
    elif baseline_only["dataset"] is None or baseline_only["ipc"] is None:
        raise DdppError("--baseline needs --dataset D and --ipc K.")


def _zca_beside(save: Path) -> Path:
    """Where a saved ZCA coreset's whitening goes: ``NAME.zca.safetensors`` beside it."""
    return save.with_name(f"{save.stem}.zca.safetensors")


def _evaluate_baseline(
    baseline_config: baselines.BaselineConfig, config: evaluate.EvalConfig, save: Path | None,
    display: EvalDisplay, data_options: dict, run: dict,
) -> tuple[evaluate.EvalResult, Path | None, Path | None]:  # fmt: skip
    """Pick the coreset, write it with ``--save`` (rank 0 only), then evaluate it.

    Returns the result, the coreset file and the ZCA file written next to it."""
    main = run["world"].is_main  # one rank writes the user's files
    saved = None
    with tempfile.TemporaryDirectory(prefix="ddpp-zca-") as scratch:
        zca_out = (
            _zca_beside(save) if save is not None and main else Path(scratch) / trajectory.ZCA_NAME
        )
        prepared = baselines.prepare_baseline(
            baseline_config, zca_out=zca_out, eval_seed=config.seed, **data_options
        )
        if save is not None and main:
            saved = distilled.save(save, prepared.make_set(prepared.indices(0, run["device"])))
        with display.progress:
            result, _ = baselines.evaluate_baseline(prepared, config, on_event=display, **run)
    written_zca = prepared.zca_path if data_options["zca_path"] is None else None
    return result, saved, written_zca


def _report(
    title: str, result: evaluate.EvalResult, payload: dict, saved: Path | None,
    zca_written: Path | None, *, json_out: bool, quiet: bool,
) -> None:  # fmt: skip
    if json_out:
        typer.echo(json.dumps(payload))
        return
    if quiet:
        out.print(f"{result.mean_std_text()} %", highlight=False)
        if saved is not None:
            line(out, str(saved))
        return
    print_result(title, result)
    if saved is not None:
        line(out, f"coreset: {saved}")
        if zca_written is not None:
            line(out, f"zca:     {zca_written}")
