"""Where a run's buffer of expert trajectories is, the command that makes it, and whether it
fits the run (dataset, architecture, preprocessing, epochs)."""

from __future__ import annotations

from pathlib import Path

from ddpp_cli.engine import data
from ddpp_cli.engine.buffer import BufferManifest, default_buffer_dir
from ddpp_cli.engine.distill.config import DistillConfig
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.layout import MANIFEST_NAME


def buffer_command(config: DistillConfig, out: Path | None = None) -> str:
    """The ``ddpp buffer`` command that makes the buffer this config needs."""
    parts = ["ddpp buffer", f"--dataset {config.dataset}", f"--arch {config.arch}"]
    use_zca = config.preset_zca()
    if use_zca != data.info(config.dataset).default_zca:
        parts.append("--zca" if use_zca else "--no-zca")
    if config.train_subset is not None:
        parts.append(f"--train-subset {config.train_subset}")
    epochs = max(config.needed_epochs, 50)
    if epochs != 50:
        parts.append(f"--epochs {epochs}")
    if out is not None:
        parts.append(f"--out {out}")
    return " ".join(parts)


def check_buffer(config: DistillConfig, folder: Path, manifest: BufferManifest) -> None:
    """DdppError when the buffer does not fit: dataset, architecture, preprocessing, epochs."""
    dataset = manifest.dataset
    if data.info(dataset).name != config.dataset:
        raise DdppError(
            f"the buffer at {folder} was made for dataset '{dataset}', not "
            f"'{config.dataset}'; pass a {config.dataset} buffer with --buffer or make one with "
            f"'{buffer_command(config)}'."
        )
    if manifest.arch != config.arch:
        raise DdppError(
            f"the buffer at {folder} was made with architecture '{manifest.arch}', "
            f"not '{config.arch}'; pass --arch {manifest.arch} or make a buffer with "
            f"'{buffer_command(config)}'."
        )
    whitened = manifest.is_zca
    if config.zca is not None and whitened != config.zca:
        raise DdppError(
            f"the buffer at {folder} is {'ZCA-whitened' if whitened else 'normalised'}"
            f" but {'--zca' if config.zca else '--no-zca'} was given; drop the option or pass "
            "a matching buffer."
        )
    epochs = manifest.epochs or 0
    if config.needed_epochs > epochs:
        raise DdppError(
            f"--max-start-epoch {config.max_start_epoch} with --expert-epochs "
            f"{config.expert_epochs} needs experts of at least {config.needed_epochs} epochs "
            f"(max_start_epoch − 1 + expert_epochs), but the buffer at {folder} has "
            f"{epochs}; lower them or train longer experts."
        )


def find_buffer(config: DistillConfig, buffer: Path | None = None) -> Path:
    """The buffer folder to use (``buffer``, else the default one); DdppError if missing."""
    folder = Path(buffer) if buffer is not None else None
    if folder is None:
        folder = default_buffer_dir(config.dataset, config.arch, config.preset_zca())
        if not (folder / MANIFEST_NAME).is_file():
            raise DdppError(
                f"no buffer of expert trajectories at {folder}; make it with "
                f"'{buffer_command(config)}' or pass --buffer."
            )
    elif not (folder / MANIFEST_NAME).is_file():
        raise DdppError(
            f"no buffer at {folder} (no {MANIFEST_NAME}); make it with "
            f"'{buffer_command(config, folder)}' or pass the right --buffer."
        )
    return folder
