"""The checks the dense data modules share (mae.data.dense.checks)."""

import pytest

from mae.data.dense.checks import check_input, load_evenly_spaced


class Recording:
    def __init__(self, size: int) -> None:
        self.size, self.loaded = size, []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        self.loaded.append(index)
        return index


@pytest.mark.parametrize(
    ("size", "samples", "expected"),
    [(10, 4, [0, 3, 6, 9]), (10, 1, [0]), (3, 8, [0, 1, 2]), (5, 0, []), (0, 4, [])],
)
def test_load_evenly_spaced_loads_the_ends_and_evenly_between(size, samples, expected):
    dataset = Recording(size)
    load_evenly_spaced(dataset, samples)
    assert dataset.loaded == expected


def test_check_input_gives_tuples_and_refuses_auto_naming_the_task():
    assert check_input(1, [0.5], [0.25], "segmentation") == (1, (0.5,), (0.25,))
    with pytest.raises(ValueError, match="not available for detection data"):
        check_input(1, "auto", "auto", "detection")
    with pytest.raises(ValueError, match="in_chans=2 must be 1"):
        check_input(2, [0.5, 0.5], [1.0, 1.0], "segmentation")
    with pytest.raises(ValueError, match="in_chans=3 values"):
        check_input(3, [0.5], [1.0], "segmentation")
