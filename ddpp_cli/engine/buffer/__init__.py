"""Buffers of expert trajectories (``ddpp buffer``): their files and manifest (:mod:`.files`),
training (:mod:`.train`) and its events (:mod:`.events`), MTT import (:mod:`.mtt_import`) and
``ddpp run``'s reuse (:mod:`.reuse`).
"""

from ddpp_cli.engine.buffer.events import (
    BufferStarted,
    BufferSummary,
    EpochFinished,
    ExpertFinished,
    ExpertRecord,
    ExpertStarted,
)
from ddpp_cli.engine.buffer.files import (
    MANIFEST_FORMAT,
    BufferManifest,
    DataDescription,
    Trajectory,
    default_buffer_dir,
    expert_files,
    expert_path,
    load_trajectory,
    read_manifest,
)
from ddpp_cli.engine.buffer.mtt_import import (
    check_import_options,
    import_mtt,
    mtt_folder_settings,
    resolve_import_zca,
)
from ddpp_cli.engine.buffer.reuse import choose_buffer, search_buffers
from ddpp_cli.engine.buffer.train import BufferConfig, train_buffer

__all__ = [
    "MANIFEST_FORMAT", "BufferConfig", "BufferManifest", "BufferStarted", "BufferSummary",
    "DataDescription", "EpochFinished", "ExpertFinished", "ExpertRecord", "ExpertStarted",
    "Trajectory", "check_import_options", "choose_buffer", "default_buffer_dir", "expert_files",
    "expert_path", "import_mtt", "load_trajectory", "mtt_folder_settings", "read_manifest",
    "resolve_import_zca", "search_buffers", "train_buffer",
]  # fmt: skip
