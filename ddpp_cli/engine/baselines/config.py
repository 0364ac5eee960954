"""What a baseline coreset is built from: :class:`BaselineConfig`, checked and described with
the coreset registry's options."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddpp_cli.engine import coresets, data, models
from ddpp_cli.engine.coresets import FORGETTING_EPOCHS, HERDING_FEATURE_EPOCHS, UNLEARNED
from ddpp_cli.engine.errors import DdppError


@dataclass(frozen=True)
class BaselineConfig:
    """What a baseline coreset is built from.

    ``zca=None``: the dataset's default (CIFAR on), or the buffer's. ``buffer``: a ``ddpp
    buffer`` folder; the data are then prepared exactly as its experts saw them (ZCA or
    normalisation, image size, data seed), and herding takes its features from the last snapshot
    of the buffer's first expert. ``feature_arch``: the network of herding's features and of
    forgetting's counts (None: the buffer's architecture, else convnet). ``forgetting_epochs``
    (forgetting) and ``feature_epochs``/``l2_normalize`` (herding; ``feature_epochs`` only
    without a buffer) apply to their method alone.
    """

    method: str
    dataset: str
    ipc: int
    zca: bool | None = None
    train_subset: int | None = None
    image_size: int | None = None
    feature_arch: str | None = None
    seed: int = 0
    buffer: Path | None = None
    forgetting_epochs: int = FORGETTING_EPOCHS
    forgetting_unlearned: str = "toneva"  # forgetting.UNLEARNED
    feature_epochs: int = HERDING_FEATURE_EPOCHS
    l2_normalize: bool = False
    channels: int | None = None  # None: the dataset's (an image folder's: from its images)

    def __post_init__(self) -> None:
        choices = coresets.list_coresets(settings=False)
        if self.method not in choices:
            raise DdppError(
                f"unknown baseline '{self.method}'; choose one of: {', '.join(choices)}."
            )
        data.info(self.dataset)  # unknown dataset -> DdppError
        data.check_channels(self.dataset, self.channels)
        if self.ipc < 1:
            raise DdppError(f"--ipc must be at least 1 (got {self.ipc}).")
        if self.train_subset is not None and self.train_subset < 1:
            raise DdppError(f"--train-subset must be at least 1 (got {self.train_subset}).")
        if self.feature_arch is not None:
            models.check_known(self.feature_arch)
        if self.forgetting_epochs < 1:
            raise DdppError(
                f"--forgetting-epochs must be at least 1 (got {self.forgetting_epochs})."
            )
        if self.feature_epochs < 1:
            raise DdppError(f"--feature-epochs must be at least 1 (got {self.feature_epochs}).")
        if self.forgetting_unlearned not in UNLEARNED:
            raise DdppError(
                f"--forgetting-unlearned must be one of: {', '.join(UNLEARNED)} "
                f"(got '{self.forgetting_unlearned}')."
            )

    def describe(self) -> dict[str, Any]:
        """The settings (JSON-ready) as recorded with the coreset and its evaluation: the
        common ones and the method's own (``feature_epochs`` only when herding trains here)."""
        settings = asdict(self)
        settings["buffer"] = None if self.buffer is None else str(Path(self.buffer).resolve())
        info = coresets.get_coreset(self.method)
        own = set(info.options)
        if self.buffer is not None:
            own -= set(info.unused_with_buffer)  # the expert's network is used, nothing trained
        for name in coresets.coreset_options():
            if name not in own:
                settings.pop(name, None)
        if self.channels is None:
            settings.pop("channels")  # as recorded before --channels existed
        return settings
