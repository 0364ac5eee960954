"""Events shared by every stage: the callback type, and the one "worth knowing" event (each
stage's own progress events live in its module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OnEvent = Callable[[object], None]
"""What every long stage takes as ``on_event``: called with each event, in order, on rank 0."""


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the work (e.g. a fallback)."""

    message: str
