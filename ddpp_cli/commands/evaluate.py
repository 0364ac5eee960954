"""``ddpp evaluate``: train fresh networks on a distilled set, a baseline coreset or another
tool's set (``--import``), and test them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from ddpp_cli.commands import _options as opt
from ddpp_cli.commands import _scores
from ddpp_cli.commands._display import err, joined_world, line, note, out, print_result, set_label
from ddpp_cli.commands._evaluate_full import check_full_options, evaluate_full_set, is_full
from ddpp_cli.commands._evaluate_sources import (
    CHOICE_OPTIONS,
    ArchOpt,
    BaselineBufferOpt,
    BaselineDatasetOpt,
    BaselineIpcOpt,
    BaselineOpt,
    BaselineSubsetOpt,
    ChoiceChannelsOpt,
    ChoiceImageSizeOpt,
    ExperimentOpt,
    FeatureEpochsOpt,
    ForceSaveOpt,
    ForgettingEpochsOpt,
    ForgettingUnlearnedOpt,
    ImportKindOpt,
    ImportOpt,
    L2NormalizeOpt,
    NoZcaOpt,
    SaveOpt,
    baseline_config_of,
)
from ddpp_cli.commands._evaluation import (
    BatchOpt,
    DsaOpt,
    EpochsOpt,
    EvalDisplay,
    LabelsOpt,
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
from ddpp_cli.commands._renamed import ZcaFileRenamedOpt
from ddpp_cli.engine import (
    baselines,
    coresets,
    distilled,
    evaluate,
    foreign,
    layout,
    models,
    store,
)
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.progress import make_progress

TRAINING = ("runs", "epochs", "lr", "batch_size", "dsa", "seed", "labels")


def command(
    target: SetOrRunArgument = None,
    arch: ArchOpt = None,
    runs: RunsOpt = 5,
    epochs: EpochsOpt = 1000,
    lr: LrOpt = None,
    batch_size: BatchOpt = 256,
    dsa: DsaOpt = True,
    labels: LabelsOpt = "set",
    zca_file: ZcaFileOpt = None,
    zca_renamed: ZcaFileRenamedOpt = None,
    baseline: BaselineOpt = None,
    dataset: BaselineDatasetOpt = None,
    ipc: BaselineIpcOpt = None,
    no_zca: NoZcaOpt = False,
    train_subset: BaselineSubsetOpt = None,
    image_size: ChoiceImageSizeOpt = None,
    channels: ChoiceChannelsOpt = None,
    buffer: BaselineBufferOpt = None,
    forgetting_epochs: ForgettingEpochsOpt = None,
    forgetting_unlearned: ForgettingUnlearnedOpt = None,
    feature_epochs: FeatureEpochsOpt = None,
    l2_normalize: L2NormalizeOpt = False,
    save: SaveOpt = None,
    force: ForceSaveOpt = False,
    import_path: ImportOpt = None,
    import_kind: ImportKindOpt = None,
    experiment: ExperimentOpt = None,
    scores: _scores.ScoresOpt = False,
    score_weight: _scores.ScoreWeightOpt = None, scores_convention: _scores.ConventionOpt = None,
    records: RecordsOpt = None,
    no_records: NoRecordsOpt = False,
    data_dir: opt.DataDirOpt = None,
    download: opt.DownloadOpt = True,
    test_subset: opt.TestSubsetOpt = None,
    parallel: opt.ParallelOpt = 1,
    device: opt.DeviceOpt = "auto",
    seed: opt.SeedOpt = 0,
    json_out: opt.JsonOpt = False,
    quiet: opt.quiet_option("mean ± std (and the set file with --save)") = False,
) -> None:  # fmt: skip
    """Train fresh networks on a set (distilled, a baseline coreset, or another tool's); test them.

    Under torchrun the ranks split the runs; rank 0 prints.
    """
    options = dict(locals())
    if is_full(baseline):
        check_full_options(options)
    choice = _choice(target, baseline, import_path, {n: options[n] for n in CHOICE_OPTIONS})
    training = {name: options[name] for name in TRAINING}
    world, torch_device = joined_world(device)
    progress = make_progress(err, disable=quiet or not world.is_main)
    data_options = {"data_root": data_dir, "download": download, "zca_path": zca_file}
    data_options["test_subset"] = test_subset
    records_at = records_dir(target, records, no_records, quiet)
    display = EvalDisplay(progress)
    run = {"device": torch_device, "parallel": parallel, "world": world, "records": records_at}
    saved, zca_written = None, None
    if save is not None:  # before any work: nothing the user made is replaced silently
        store.refuse_existing(save, _zca_beside(save), force=force)
    if choice == "set":
        path = evaluate.find_set(target)
        distilled_set = distilled.load(path)
        default_arch = distilled_set.arch if distilled_set.arch in models.available() else "convnet"
        config = eval_config(arch or default_arch, **training)
        title = f"Evaluation of {set_label(path, distilled_set)} on {torch_device}"
        with progress:
            result = evaluate.evaluate_set(
                distilled_set, config, on_event=display, **data_options, **run
            )
        payload = _scores.set_payload(path, result, distilled_set, config, options, run, display)
    elif choice == "--import":
        config = eval_config(arch or "convnet", **training)
        imported = {
            "kind": import_kind, "experiment": experiment, "no_zca": no_zca,
            "image_size": image_size,
        }  # fmt: skip
        result, distilled_set, saved, zca_written = _evaluate_import(
            import_path, dataset, imported, config, save, display, data_options, run
        )
        title = f"Evaluation of {set_label(import_path, distilled_set)} on {torch_device}"
        payload = {"set": None if saved is None else str(saved), **result.to_json()}
    elif is_full(baseline):
        config = eval_config(arch or "convnet", **training)
        result, title, payload, records_at = evaluate_full_set(
            options, config, display, data_options, run
        )
    else:
        baseline_config = baseline_config_of(options)
        config = eval_config(arch or "convnet", **training)
        result, saved, zca_written = _evaluate_baseline(
            baseline_config, config, save, display, data_options, run
        )
        title = (
            f"Evaluation of the {baseline_config.method} baseline "
            f"({result.protocol['dataset']}, IPC {ipc})"
        )
        payload = {"set": None if saved is None else str(saved), **result.to_json()}
    if choice != "--baseline":  # another tool's set, imported now or saved by an import
        lr_note = foreign.default_lr_note(distilled_set, result.lr, result.protocol["lr_source"])
        if lr_note is not None:
            payload["lr_note"] = lr_note
    if world.is_main:
        _report(title, result, payload, saved, zca_written, json_out=json_out, quiet=quiet)
        if not (json_out or quiet) and records_at is not None:
            line(out, records_line(records_at, display))


def _choice(
    target: Path | None, baseline: str | None, import_path: Path | None, given: dict
) -> str:
    """ "set", "--baseline" or "--import"; DdppError unless exactly one is asked for, complete,
    and without options of the others."""
    chosen = [name for name, value in (("--baseline", baseline), ("--import", import_path))
              if value is not None]  # fmt: skip
    if target is not None and chosen:
        raise DdppError(f"pass either a set ({target}) or {chosen[0]}, not both.")
    if len(chosen) > 1:
        raise DdppError("pass either --baseline or --import, not both.")
    choice = chosen[0] if chosen else "set"
    misplaced = [
        name
        for name, value in given.items()
        if value is not None and value is not False and choice not in CHOICE_OPTIONS[name]
    ]
    if misplaced:
        flags = ", ".join("--" + name.replace("_", "-") for name in misplaced)
        ways = sorted({way for name in misplaced for way in CHOICE_OPTIONS[name]})
        raise DdppError(f"{flags} only apply with {' or '.join(ways)}.")
    if choice == "set" and target is None:
        raise DdppError(
            "nothing to evaluate: pass a distilled-set file or run folder, "
            f"--baseline {'|'.join(coresets.list_coresets(settings=False))} --dataset D --ipc K, "
            "or --import PATH --dataset D."
        )
    full = is_full(baseline)  # the whole training set needs no --ipc
    if choice == "--baseline" and (given["dataset"] is None or (given["ipc"] is None and not full)):
        raise DdppError("--baseline needs --dataset D and --ipc K.")
    if choice == "--import" and given["dataset"] is None:
        raise DdppError("--import needs --dataset D, the dataset the set was made from.")
    return choice


def _zca_beside(save: Path) -> Path:
    """Where a saved ZCA coreset's whitening goes: ``NAME.zca.safetensors`` beside it."""
    return save.with_name(f"{save.stem}.zca.safetensors")


def _evaluate_baseline(
    baseline_config: baselines.BaselineConfig, config: evaluate.EvalConfig, save: Path | None,
    display: EvalDisplay, data_options: dict, run: dict,
) -> tuple[evaluate.EvalResult, Path | None, Path | None]:  # fmt: skip
    """Pick the coreset (training herding's or forgetting's network first), write it with
    ``--save`` (rank 0 only), then evaluate it.

    Returns the result, the coreset file and the ZCA file written next to it."""
    main = run["world"].is_main  # one rank writes the user's files
    saved = None
    with tempfile.TemporaryDirectory(prefix="ddpp-zca-") as scratch:
        zca_out = _zca_out(save, main, scratch)
        prepared = baselines.prepare_baseline(
            baseline_config, zca_out=zca_out, eval_seed=config.seed, **data_options
        )
        with display.progress:
            chosen = prepared.indices(
                0, run["device"], on_event=display, kept_in=run["records"], keep=main
            )
            if save is not None and main:  # before the evaluation, which a kill may cut short
                saved = distilled.save(save, prepared.make_set(chosen))
            result, _ = baselines.evaluate_baseline(prepared, config, on_event=display, **run)
    written_zca = prepared.zca_path if saved is not None and prepared.zca_path == zca_out else None
    return result, saved, written_zca


def _evaluate_import(
    path: Path, dataset: str, imported: dict, config: evaluate.EvalConfig, save: Path | None,
    display: EvalDisplay, data_options: dict, run: dict,
) -> tuple[evaluate.EvalResult, distilled.DistilledSet, Path | None, Path | None]:  # fmt: skip
    """Import another tool's set (fitting a ZCA beside ``--save`` where one is needed), write it
    with ``--save`` (rank 0 only), then evaluate it.

    Returns the result, the set, its file and the ZCA file written next to it."""
    main = run["world"].is_main
    saved, written_zca = None, None
    with tempfile.TemporaryDirectory(prefix="ddpp-zca-") as scratch:
        zca_out = _zca_out(save, main, scratch)
        found = foreign.import_for_dataset(
            path, dataset, kind=imported["kind"], experiment=imported["experiment"],
            lr=config.lr, zca=False if imported["no_zca"] else None,
            zca_path=data_options["zca_path"], zca_out=zca_out,
            data_root=data_options["data_root"], download=data_options["download"],
            image_size=imported["image_size"], seed=config.seed,
        )  # fmt: skip
        if save is not None and main:
            saved = distilled.save(save, found)
            if zca_out.is_file():
                written_zca = zca_out
        with display.progress:
            result = evaluate.evaluate_set(
                found, config, on_event=display, data_root=data_options["data_root"],
                download=data_options["download"], test_subset=data_options["test_subset"],
                **run,
            )  # fmt: skip
    return result, found, saved, written_zca


def _zca_out(save: Path | None, main: bool, scratch: str) -> Path:
    """Where a freshly fitted ZCA goes: beside ``--save`` (rank 0), else a scratch folder."""
    return _zca_beside(save) if save is not None and main else Path(scratch) / layout.ZCA_NAME


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
    print_result(title, result, payload.get("scores"))
    if "lr_note" in payload:
        note(out, payload["lr_note"])
    if saved is not None:
        line(out, f"set: {saved}")
        if zca_written is not None:
            line(out, f"zca:     {zca_written}")
