"""``ddpp crossarch``: evaluate one set with several architectures (the paper's Table III)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddpp_cli.commands import _options as opt
from ddpp_cli.commands._display import (
    err,
    joined_world,
    line,
    network_label,
    out,
    protocol_line,
    set_label,
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
    records_dir,
    records_line,
)
from ddpp_cli.commands._renamed import ZcaFileRenamedOpt
from ddpp_cli.engine import augment, distilled, evaluate
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.progress import make_progress, percent


def command(
    target: SetOrRunArgument = None,
    archs: Annotated[
        str,
        typer.Option("--archs", help=f"Comma-separated architectures: {opt.ARCHITECTURES}."),
    ] = "convnet,alexnet,vgg11,resnet18",
    runs: RunsOpt = 5,
    epochs: EpochsOpt = 1000,
    lr: LrOpt = None,
    batch_size: BatchOpt = 256,
    dsa: DsaOpt = True,
    labels: LabelsOpt = "set",
    zca_file: ZcaFileOpt = None,
    zca_renamed: ZcaFileRenamedOpt = None,
    records: RecordsOpt = None,
    no_records: NoRecordsOpt = False,
    data_dir: opt.DataDirOpt = None,
    download: opt.DownloadOpt = True,
    test_subset: opt.TestSubsetOpt = None,
    parallel: opt.ParallelOpt = 1,
    device: opt.DeviceOpt = "auto",
    seed: opt.SeedOpt = 0,
    json_out: opt.JsonOpt = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as Markdown on stdout.")
    ] = False,
    quiet: opt.quiet_option("one 'arch: mean ± std' line per architecture") = False,
) -> None:
    """Evaluate one set with several architectures (like the paper's Table III).

    Under torchrun the ranks split the runs of each architecture; rank 0 prints.
    """
    if target is None:
        raise DdppError("pass a distilled-set file or a run folder to evaluate.")
    if json_out and markdown:
        raise DdppError("--json and --markdown both claim stdout; pass one of them.")
    records_at = records_dir(target, records, no_records, quiet)
    names = [name.strip().lower() for name in archs.split(",") if name.strip()]
    path = evaluate.find_set(target)
    distilled_set = distilled.load(path)
    config = evaluate.EvalConfig(
        runs=runs, epochs=epochs, lr=lr, batch_size=batch_size,
        dsa_strategy=augment.DEFAULT_STRATEGY if dsa else "none", seed=seed,
        labels=labels.lower(),
    )  # fmt: skip
    world, torch_device = joined_world(device)
    progress = make_progress(err, disable=quiet or not world.is_main)
    display = EvalDisplay(progress)
    with progress:
        results = evaluate.crossarch(
            distilled_set, names, config, data_root=data_dir, download=download,
            zca_path=zca_file, test_subset=test_subset, device=torch_device,
            on_event=display, parallel=parallel, world=world, records=records_at,
        )  # fmt: skip
    if not world.is_main:
        return
    if json_out:
        payload = {
            "set": str(path),
            "archs": list(results),
            "results": {name: result.to_json() for name, result in results.items()},
        }
        typer.echo(json.dumps(payload))
    elif markdown:
        _print_markdown(results, distilled_set)
    elif quiet:
        for name, result in results.items():
            out.print(f"{name}: {result.mean_std_text()} %", highlight=False)
    else:
        _print_table(results, path, distilled_set)
        if records_at is not None:
            line(out, records_line(records_at, display))


def _label(distilled_set) -> str:
    return f"{distilled_set.source} IPC {distilled_set.ipc}"


def _print_markdown(results: dict[str, evaluate.EvalResult], distilled_set) -> None:
    """The table's row names the set, and the labels that trained when it carries vectors."""
    typer.echo("| set | " + " | ".join(results) + " |")
    typer.echo("|---|" + "---:|" * len(results))
    cells = " | ".join(r.mean_std_text() for r in results.values())
    name = _label(distilled_set)
    if distilled_set.targets is not None:
        name += f" · {next(iter(results.values())).protocol['label_text']}"
    typer.echo(f"| {name} | {cells} |")


def _print_table(results: dict[str, evaluate.EvalResult], path: Path, distilled_set) -> None:
    table = Table(title=f"Cross-architecture test accuracy (%) of {set_label(path, distilled_set)}")
    table.add_column("set")
    for name in results:
        table.add_column(name, justify="right")
    table.add_row(_label(distilled_set), *(r.mean_std_text() for r in results.values()))
    out.print(table)
    first = next(iter(results.values()))
    line(out, protocol_line(first, network="each architecture"))
    for result in results.values():
        runs_text = ", ".join(percent(a) for a in result.accuracies)
        label = network_label(result)
        out.print(f"{label}: {runs_text}  ({result.seconds:.0f} s)", highlight=False)
