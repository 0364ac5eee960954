"""Published numbers next to ddpp's own (engine/published.py): exactly docs/published.md's."""

import ast
import re
from pathlib import Path

from ddpp_cli.engine import published

DOC = Path(__file__).resolve().parents[1] / "docs" / "published.md"


def test_the_issues_fashion_mnist_references_are_marked_as_docs_published_md_says():
    for ipc, row, accuracy in ((1, "random", 51.4), (10, "herding", 71.1), (1, "forgetting", 42.0)):
        found = published.reference("fashionmnist", ipc, row)
        assert (found.accuracy, found.std, found.confirmed) == (accuracy, None, False)
        assert found.text() == f"{accuracy:.1f}ᵘ" and "no source" in found.source
    dc = published.reference("fashionmnist", 10, "dc")
    assert (dc.accuracy, dc.std, dc.confirmed, dc.text()) == (82.3, 0.4, True, "82.3 ± 0.4")
    assert dc.source == "DatasetCondensation readme; std: KIP paper (NeurIPS 2021 draft)"
    dsa = published.reference("fashionmnist", 1, "dsa")
    assert (dsa.accuracy, dsa.std, dsa.confirmed) == (70.6, 0.6, True)


def test_cells_stds_and_sources_follow_the_tables():
    assert published.reference("cifar10", 1, "random").text() == "14.4"  # sources' stds disagree
    assert published.reference("cifar10", 10, "random").text() == "26.0 ± 1.2"
    assert published.reference("cifar10", 50, "dc").text() == "53.9 ± 0.5"
    assert published.reference("cifar10", 1, "ddpp").source == "FTD (CVPR 2023)"
    assert published.reference("cifar100", 50, "dc") is None  # "—": none published
    dsa = published.reference("cifar100", 50, "dsa")  # the readme gives IPC 1/10 only
    assert "DatasetCondensation" not in dsa.source and dsa.confirmed
    assert not published.reference("mnist", 1, "dm").confirmed
    assert published.reference("fashionmnist", 1, "mtt") is None
    assert published.reference("fashionmnist", 5, "dsa") is None  # no published IPC 5
    assert published.reference("svhn", 1, "random") is None


def test_every_confirmed_figure_is_docs_published_md_data_block_and_no_other():
    block = re.search(r"```python\nPUBLISHED = (\{.*?\n\})\n```", DOC.read_text(), re.S)
    expected = ast.literal_eval(block.group(1))
    confirmed = {
        key: (found.accuracy, found.std)
        for key, found in published.references().items()
        if found.confirmed
    }
    assert confirmed == expected


def test_every_unconfirmed_figure_is_a_u_cell_of_docs_published_md():
    doc, expected = DOC.read_text(), {}
    for heading, dataset in (("## Fashion-MNIST\n", "fashionmnist"), ("## MNIST\n", "mnist")):
        section = doc.split(heading)[1].split("\n## ")[0]
        for method, *cells in re.findall(
            r"^\| ([\w+]+) \| ([\d.]+) ᵘ \| ([\d.]+) ᵘ \| ([\d.]+) ᵘ", section, re.M
        ):
            for ipc, cell in zip((1, 10, 50), cells, strict=True):
                expected[(dataset, ipc, method.lower().replace("+", "-"))] = float(cell)
    kip = re.search(r"73.8 / 86.8 / 87.8 \(Fashion-MNIST\) and 90.1 / 97.5 / 98.4 \(MNIST\)", doc)
    assert kip, "the KIP note of docs/published.md changed"  # its draft figures, unconfirmed
    for dataset, cells in (("fashionmnist", (73.8, 86.8, 87.8)), ("mnist", (90.1, 97.5, 98.4))):
        expected |= {(dataset, ipc, "kip"): v for ipc, v in zip((1, 10, 50), cells, strict=True)}
    unconfirmed = {
        key: found.accuracy for key, found in published.references().items() if not found.confirmed
    }
    assert len(expected) == 48 and unconfirmed == expected
    assert all(found.confirmed or found.std is None for found in published.references().values())
