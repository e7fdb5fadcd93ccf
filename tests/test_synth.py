"""The generator's ground truth for box crops (used by the digit bench and training)."""

from inference.digits import EMPTY
from inference.synth import box_label


def test_box_label_digits_blank_and_unused_leading_boxes():
    assert [box_label(27, 3, b) for b in range(3)] == [None, 2, 7]
    assert [box_label(105, 3, b) for b in range(3)] == [1, 0, 5]
    assert [box_label(None, 3, b) for b in range(3)] == [EMPTY] * 3
    assert [box_label(0, 2, b) for b in range(2)] == [None, 0]
