"""The data of a baseline: the pool and test split prepared as a set of real images needs them
(normalised or whitened), or exactly as a buffer's experts saw them (``--buffer``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpp_cli.engine import coresets, data, layout, store, zca
from ddpp_cli.engine.baselines.config import BaselineConfig
from ddpp_cli.engine.baselines.selection import Baseline
from ddpp_cli.engine.buffer import expert_files, read_manifest
from ddpp_cli.engine.coresets import check_ipc
from ddpp_cli.engine.distilled import zca_reference
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import take_test_subset
from ddpp_cli.engine.preprocess import PreparedData, prepare


@dataclass(frozen=True)
class _BufferData:
    """How a buffer's experts saw the data, for a baseline prepared like them."""

    arch: str
    zca_file: Path | None
    normalization: Any  # preprocess.Normalization | None
    image_size: int | None
    seed: int
    expert_file: Path | None
    channels: int | None = None  # as the experts saw the data (None: not recorded)


def _buffer_data(config: BaselineConfig, zca_path: Path | None) -> _BufferData:
    """Read ``config.buffer``'s manifest; DdppError when it contradicts the config."""
    folder = Path(config.buffer)
    manifest = read_manifest(folder)  # DdppError when not a buffer
    name = data.info(config.dataset).name
    dataset = manifest.dataset
    if not isinstance(dataset, str) or data.info(dataset).name != name:
        raise DdppError(
            f"the buffer at {folder} was made for dataset '{dataset}', not '{name}'; pass a "
            f"{name} buffer or drop --buffer."
        )
    arch = manifest.arch
    if config.feature_arch is not None and config.feature_arch != arch:
        raise DdppError(
            f"the buffer at {folder} holds '{arch}' experts, not '{config.feature_arch}'."
        )
    is_zca = manifest.is_zca
    if zca_path is not None:
        raise DdppError("--zca-file PATH and --buffer both fix the whitening; drop --zca-file (the "
                        "buffer's own ZCA is used).")  # fmt: skip
    if config.zca is not None and config.zca != is_zca:
        raise DdppError(
            f"the buffer at {folder} is {'ZCA-whitened' if is_zca else 'normalised'}; drop "
            f"{'--no-zca' if is_zca else '--zca'} or pass another buffer."
        )
    image_size = manifest.image_size
    if config.image_size is not None and config.image_size != image_size:
        raise DdppError(
            f"the buffer at {folder} was made at --image-size {image_size}, not "
            f"{config.image_size}; drop --image-size."
        )
    channels = manifest.data.channels
    if config.channels is not None and channels is not None and config.channels != channels:
        raise DdppError(
            f"the buffer at {folder} was made from {channels}-channel images, not "
            f"{config.channels}; drop --channels."
        )
    zca_file = folder / layout.ZCA_NAME if is_zca else None
    if zca_file is not None and not zca_file.is_file():
        raise DdppError(f"the buffer at {folder} is ZCA-whitened but its {layout.ZCA_NAME} "
                        "is missing; remake the buffer.")  # fmt: skip
    experts = expert_files(folder)
    if coresets.get_coreset(config.method).expert_features and not experts:
        raise DdppError(f"the buffer at {folder} holds no expert yet; finish it with 'ddpp "
                        "buffer', or drop --buffer to train a feature network.")  # fmt: skip
    return _BufferData(
        arch=arch,
        zca_file=zca_file,
        normalization=None if is_zca else manifest.normalization,
        image_size=image_size,
        seed=manifest.seed,
        expert_file=experts[min(experts)] if experts else None,
        channels=channels,
    )


def prepare_pool(
    dataset: str,
    *,
    use_zca: bool,
    zca_path: Path | None = None,
    zca_out: Path | None = None,
    data_root: Path | None = None,
    download: bool = True,
    train_subset: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    normalization: Any = None,
    channels: int | None = None,
) -> tuple[PreparedData, dict[str, Any], Path | None]:
    """``dataset`` prepared for a set of real (or imported) images: (the data, the
    ``preprocessing`` record a set of it carries, the ZCA file or None).

    With ``use_zca`` the data are whitened with ``zca_path`` (DdppError when it was fitted on
    another dataset), else with a ZCA fitted on the train split and saved to ``zca_out``;
    without, normalised (``normalization``: a buffer's recorded one, or the mean/std another
    tool normalised an imported set with, see ``foreign_tools``; else the dataset's).
    """
    name = data.info(dataset).name
    whitening = None
    if zca_path is not None:
        fitted_on = store.read_metadata(Path(zca_path)).get("dataset")
        whitening = zca.load(Path(zca_path))
        if isinstance(fitted_on, str) and data.info(fitted_on).name != name:
            raise DdppError(
                f"the ZCA at {zca_path} was fitted on {fitted_on}, not {name}; pass the "
                f"ZCA of a {name} buffer."
            )
    prepared = prepare(
        name, data_root, use_zca=use_zca, download=download, train_subset=train_subset,
        image_size=image_size, seed=seed, whitening=whitening, normalization=normalization,
        channels=channels,
    )  # fmt: skip
    if not use_zca:
        return prepared, prepared.preprocessing.describe(), None
    if zca_path is None:
        if zca_out is None:
            raise ValueError("zca_out is needed to save a freshly fitted ZCA")
        zca_path = zca.save(prepared.preprocessing.whitening, zca_out, {"dataset": name})
    return prepared, zca_reference(Path(zca_path)), Path(zca_path)


def prepare_baseline(
    config: BaselineConfig,
    *,
    data_root: Path | None = None,
    download: bool = True,
    zca_path: Path | None = None,
    zca_out: Path | None = None,
    test_subset: int | None = None,
    eval_seed: int = 0,
) -> Baseline:
    """Load and transform the data for a baseline.

    With ``config.buffer`` the data are prepared as the buffer's experts saw them (its ZCA file,
    or its recorded normalisation; its image size and data seed). Otherwise ZCA (``config.zca``,
    default on for CIFAR) reuses ``zca_path`` (e.g. a buffer's ``zca.safetensors``, so the
    coreset is comparable with sets distilled from that buffer), or is fitted on the train split
    and saved to ``zca_out`` so that a saved coreset can refer to it.
    """
    info = data.info(config.dataset)
    buffer = _buffer_data(config, zca_path) if config.buffer is not None else None
    if zca_path is not None and config.zca is False:
        raise DdppError("--zca-file PATH and --no-zca contradict each other; drop one.")
    if buffer is not None:
        zca_path, use_zca = buffer.zca_file, buffer.zca_file is not None
        image_size, data_seed = buffer.image_size, buffer.seed
    else:
        use_zca = info.default_zca if config.zca is None else config.zca
        use_zca = use_zca or zca_path is not None
        image_size, data_seed = config.image_size, config.seed
    pool = prepare_pool(
        info.name, use_zca=use_zca, zca_path=zca_path, zca_out=zca_out, data_root=data_root,
        download=download, train_subset=config.train_subset, image_size=image_size,
        seed=data_seed, normalization=None if buffer is None else buffer.normalization,
        channels=config.channels if buffer is None else buffer.channels,
    )  # fmt: skip
    prepared, described, zca_path = pool
    check_ipc(prepared.train, config.ipc)
    test = take_test_subset(prepared.test, test_subset, eval_seed)
    return Baseline(
        config=config,
        train=prepared.train,
        test_images=test.images,
        test_labels=test.labels,
        preprocessing=prepared.preprocessing,
        preprocessing_info=described,
        zca_path=zca_path,
        data_seed=data_seed,
        image_size=image_size,
        expert_file=None if buffer is None else buffer.expert_file,
        feature_arch=config.feature_arch or (buffer.arch if buffer is not None else "convnet"),
    )
