"""Clipping boxes and points to the image, as the reference 0.27's ``detector/geometry.py``.

The Loop stores a box as its top-left corner and its size in whole pixels; :func:`clip_box` turns a model's
unrounded box into that form, rounding once, here.
"""

from __future__ import annotations


def clip_box(
    *, x1: float, y1: float, width: float, height: float, img_width: int, img_height: int
) -> tuple[int, int, int, int]:
    """The box ``(x1, y1, width, height)`` cut to the image and rounded: an int tuple whose size is never negative.

    The corners are clamped to ``[0, img_width]`` x ``[0, img_height]`` (a left edge only from below, a right edge
    only from above) and rounded; the size is the difference of the rounded corners.
    """
    left = round(max(0.0, x1))
    top = round(max(0.0, y1))
    right = round(min(float(img_width), x1 + width))
    bottom = round(min(float(img_height), y1 + height))
    return left, top, max(right - left, 0), max(bottom - top, 0)


def clip_point(x: float, y: float, img_width: int, img_height: int) -> tuple[float, float]:
    """The point clamped into ``[0, img_width]`` x ``[0, img_height]`` (not rounded)."""
    return min(max(0, x), img_width), min(max(0, y), img_height)
