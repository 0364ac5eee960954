"""``ddpp buffer``: train (or import) expert trajectories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddpp_cli.commands._display import continuing, err, joined_world, line, out
from ddpp_cli.commands._displays import BufferDisplay
from ddpp_cli.commands._options import (
    ARCHITECTURES,
    BUFFER,
    ChannelsOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DownloadOpt,
    ExpertsOpt,
    ImageSizeOpt,
    ParallelOpt,
    SeedOpt,
    TestSubsetOpt,
    TrainSubsetOpt,
    ZcaOpt,
    quiet_option,
)
from ddpp_cli.commands._settings import field_default, given_options
from ddpp_cli.engine import augment, data, faults, layout
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.progress import make_progress, percent

# The expert recipe's defaults (shown by --help): BufferConfig's, the paper's.
EXPERTS, EPOCHS, LR, BATCH_SIZE, ARCH = (
    field_default(buffer_engine.BufferConfig, name)
    for name in ("experts", "epochs", "lr", "batch_size", "arch")
)


def command(
    ctx: typer.Context,
    dataset: DatasetOpt = "cifar10",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = True,
    arch: Annotated[
        str, typer.Option("--arch", help=f"Expert architecture: {ARCHITECTURES}.")
    ] = ARCH,
    experts: ExpertsOpt = EXPERTS,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Training epochs per expert.", rich_help_panel=BUFFER)
    ] = EPOCHS,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = LR,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Training batch size.")
    ] = BATCH_SIZE,
    zca: ZcaOpt = None,
    dsa: Annotated[
        bool, typer.Option("--dsa/--no-dsa", help="Differentiable augmentation while training.")
    ] = True,
    train_subset: TrainSubsetOpt = None,
    test_subset: TestSubsetOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    import_dir: Annotated[
        Path | None,
        typer.Option(
            "--import",
            help="Convert MTT replay_buffer_*.pt files from this folder (resumable; --experts N "
            "takes the first N; ZCA and the dataset come from MTT's folder name when it tells, "
            "e.g. cifar10_NO_ZCA/ConvNet).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help=f"Buffer folder (default: the ddpp data folder's '{layout.BUFFERS_DIRNAME}').",
        ),
    ] = None,
    parallel: ParallelOpt = 1,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    quiet: quiet_option("the buffer folder") = False,
) -> None:
    """Train expert trajectories (resumable; rerun the same command to continue).

    Under torchrun the ranks split the experts; rank 0 prints.
    """
    if import_dir is not None:
        summary = _import(ctx, import_dir, out_dir, quiet)
    else:
        use_zca = data.info(dataset).default_zca if zca is None else zca
        folder = out_dir or buffer_engine.default_buffer_dir(dataset, arch, use_zca)
        world, torch_device = joined_world(device)
        config = buffer_engine.BufferConfig(
            dataset=dataset, arch=arch, experts=experts, epochs=epochs, lr=lr,
            batch_size=batch_size, dsa_strategy=augment.DEFAULT_STRATEGY if dsa else "none",
            zca=use_zca, train_subset=train_subset, test_subset=test_subset, image_size=image_size,
            seed=seed, channels=channels,
        )  # fmt: skip
        progress = make_progress(err, disable=quiet or not world.is_main)
        with layout.writing(folder, enabled=world.is_main), continuing(_continuation), progress:
            summary = buffer_engine.train_buffer(
                config, folder, data_root=data_dir, download=download, device=torch_device,
                on_event=BufferDisplay(progress, str(torch_device)), parallel=parallel,
                world=world,
            )  # fmt: skip
        if not world.is_main:
            return
    if quiet:
        line(out, str(summary.folder))
        return
    _print_summary(summary)


def _continuation(failed: faults.StageFailed) -> str:
    """How to continue a buffer stopped by a fault: the finished experts are kept."""
    smaller = " with a smaller --parallel" if failed.out_of_memory else ""
    return f"the same command{smaller} continues with the missing ones"


def _print_summary(summary: buffer_engine.BufferSummary) -> None:
    table = Table(title=f"Expert trajectories in {summary.folder}")
    table.add_column("expert", justify="right")
    table.add_column("final test acc", justify="right")
    table.add_column("best test acc", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("file")
    for record in summary.experts:
        accs = record.test_accuracy
        seconds = "–" if record.seconds is None else f"{record.seconds:.0f}"
        table.add_row(
            str(record.index),
            percent(accs[-1] if accs else None),
            percent(max(accs) if accs else None),
            "resumed" if record.resumed else seconds,
            record.path.name,
        )
    out.print(table)
    line(out, f"manifest: {summary.manifest}")
    if summary.zca is not None:
        line(out, f"zca:      {summary.zca}")


def _import(
    ctx: typer.Context, source: Path, out_dir: Path | None, quiet: bool
) -> buffer_engine.BufferSummary:
    """``--import``: refuse training options, take ZCA (and the dataset) from MTT's folder name
    unless given, convert (resumable)."""
    given = given_options(ctx)
    buffer_engine.check_import_options(given)
    options = ctx.params
    named_dataset, _ = buffer_engine.mtt_folder_settings(source)
    dataset = given.get("dataset") or named_dataset or options["dataset"]
    dataset = data.info(dataset).name
    use_zca = buffer_engine.resolve_import_zca(source, dataset, options["zca"])
    folder = out_dir or buffer_engine.default_buffer_dir(dataset, options["arch"], use_zca)
    progress = make_progress(err, disable=quiet)
    continuation = continuing(lambda failed: "the same command continues with the next expert")
    with layout.writing(folder), continuation, progress:
        return buffer_engine.import_mtt(
            source, folder, dataset=dataset, arch=options["arch"],
            experts=given.get("experts"), use_zca=options["zca"],
            data_root=options["data_dir"], download=options["download"],
            image_size=options["image_size"], device=options["device"],
            on_event=BufferDisplay(progress),
        )  # fmt: skip
