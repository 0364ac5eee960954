"""Published numbers next to ddpp's own (engine/published.py): only METHODS.md §7's values."""

from ddpp_cli.engine import published


def test_published_numbers_are_those_quoted_in_methods_md():
    dsa = published.reference("fashionmnist", 1, "dsa")
    assert (dsa.accuracy, dsa.std, dsa.confirmed) == (70.6, None, True)
    herding = published.reference("fashionmnist", 10, "herding")
    assert herding.accuracy == 71.1 and not herding.confirmed
    assert "unchecked" in herding.text()
    assert published.reference("cifar10", 50, "dc").text() == (
        "53.9 ± 0.5 (DatasetCondensation readme)"
    )
    assert published.reference("cifar10", 1, "ddpp").accuracy == 46.4
    assert published.reference("fashionmnist", 1, "mtt") is None
    assert published.reference("fashionmnist", 5, "dsa") is None  # no published IPC 5
    assert published.reference("svhn", 1, "random") is None
