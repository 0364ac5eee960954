"""Events shared by every stage (each stage's own progress events live in its module)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the work (e.g. a fallback)."""

    message: str
