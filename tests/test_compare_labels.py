"""The compare table's protocol sentence says which labels trained each row's networks."""

from __future__ import annotations

from types import SimpleNamespace

from ddpp_cli.engine.compare.table import labels_clause


def row(label_text: str | None) -> SimpleNamespace:
    protocol = {} if label_text is None else {"label_text": label_text}
    return SimpleNamespace(result=SimpleNamespace(protocol=protocol))


def test_hard_rows_say_hard_labels_and_mixed_rows_say_their_own():
    assert labels_clause([row("hard labels"), row(None)]) == "trained on hard labels"
    mixed = [row("hard labels"), row("learned labels (soft CE, T 1)")]
    assert labels_clause(mixed) == (
        "trained on each set's own labels (hard labels where the row names none)"
    )
    assert labels_clause([]) == "trained on hard labels"
