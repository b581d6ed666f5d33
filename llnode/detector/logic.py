"""The detector's user API: a factory that builds a logic per model version, and the logic that runs inference.

Users subclass :class:`DetectorFactory` and :class:`DetectorLogic` (plain subclassing, public hook names). Both are
synchronous; the node never calls a logic from two threads at once unless the logic sets ``thread_safe = True``
(see :mod:`llnode.detector.batching`). Results are checked here, in one place, so a logic that returns the wrong
thing fails with an error that names it instead of a confusing failure further down (serialisation, the outbox).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llnode.node.errors import Unprocessable
from llnode.schema import ImageMetadata, ImagesMetadata, ModelInformation

#: channel counts an image array may have in its third axis (gray, RGB, RGBA); a 2-d array is gray
IMAGE_CHANNELS = (1, 3, 4)


class LogicResultError(TypeError):
    """A detector logic returned something other than what its contract promises (a bug in the logic)."""


class ImageInputError(Unprocessable, ValueError):
    """An image handed to inference is not an array the detector can use (shape, size or type); HTTP 422."""


class DetectorLogic:
    """One loaded model: ``evaluate`` one image, or ``batch_evaluate`` several.

    Subclasses implement ``evaluate`` (and ``batch_evaluate`` when the model gains from batches; the default
    calls ``evaluate`` per image). Images are numpy arrays ``HxW``, ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4`` (RGBA).
    ``thread_safe = True`` declares that the logic may run concurrently with itself. ``close()`` frees resources
    (GPU memory, sessions) when the model is swapped out; it is called once, after the last inference.

    ``batch_evaluate`` gets images of one shape and dtype only: the node batches concurrent requests (from
    different cameras, say) together only when their images match, and splits a client's own mixed batch by
    shape, because a logic may size or clip every result by ``images[0].shape`` (as yolov5_node's does).
    ``accepts_mixed_shapes = True`` declares that the logic handles each image's own shape; then any images
    share a batch.
    """

    thread_safe: ClassVar[bool] = False
    accepts_mixed_shapes: ClassVar[bool] = False

    def __init__(self, model_info: ModelInformation) -> None:
        if not isinstance(model_info, ModelInformation):
            raise TypeError(f'{type(self).__name__} needs a ModelInformation, got {type(model_info).__name__}')
        self.model_info = model_info

    @property
    def model_folder(self) -> Path | None:
        """The folder the model's files were installed into (``model_info.model_root_path``), if known."""
        root = self.model_info.model_root_path
        return Path(root) if root else None

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        """The detections for one image."""
        raise NotImplementedError(f'{type(self).__name__} must implement evaluate(image)')

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        """The detections for several images, in their order; by default ``evaluate`` per image."""
        return [self.evaluate(image) for image in images]

    def close(self) -> None:
        """Free what the model holds; the default does nothing."""

    def __repr__(self) -> str:
        return f'<{type(self).__name__} model {self.model_info.version!r} ({self.model_info.id})>'


class DetectorFactory:
    """Builds a :class:`DetectorLogic` for each model version the detector installs.

    ``model_format`` is the format key the node downloads models in (the Loop's ``/models/{id}/{format}/file``);
    give it as a class attribute or to the constructor. ``build`` may take long (loading weights); the node runs
    it beside the serving model and swaps when it is done.
    """

    model_format: str = ''

    def __init__(self, model_format: str | None = None) -> None:
        if model_format is not None:
            self.model_format = model_format
        if not isinstance(self.model_format, str) or not self.model_format.strip():
            raise ValueError(
                f'{type(self).__name__} needs a model_format (class attribute or constructor argument), '
                f'got {self.model_format!r}'
            )

    def build(self, model_info: ModelInformation) -> DetectorLogic:
        """A new logic for the model described by ``model_info`` (its files are in ``model_info.model_root_path``)."""
        raise NotImplementedError(f'{type(self).__name__} must implement build(model_info)')

    def __repr__(self) -> str:
        return f'<{type(self).__name__} format {self.model_format!r}>'


def check_image(image: Any, *, what: str = 'image') -> np.ndarray:
    """``image`` if it is an array the detector can use (``HxW`` or ``HxWxC`` with C in 1, 3, 4, not empty)."""
    if not isinstance(image, np.ndarray):
        raise ImageInputError(f'{what} must be a numpy array, got {type(image).__name__}')
    if image.ndim not in (2, 3):
        raise ImageInputError(f'{what} must have shape HxW or HxWxC, got shape {image.shape}')
    if image.ndim == 3 and image.shape[2] not in IMAGE_CHANNELS:
        raise ImageInputError(f'{what} must have 1, 3 or 4 channels, got shape {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageInputError(f'{what} is empty (shape {image.shape})')
    return image


def checked_metadata(logic: DetectorLogic, result: Any) -> ImageMetadata:
    """``result`` of ``logic.evaluate`` if it is an ImageMetadata, else a :class:`LogicResultError`."""
    if not isinstance(result, ImageMetadata):
        raise LogicResultError(
            f'{type(logic).__name__}.evaluate returned {type(result).__name__}, expected ImageMetadata'
        )
    return result


def checked_batch(logic: DetectorLogic, result: Any, expected: int) -> list[ImageMetadata]:
    """``result`` of ``logic.batch_evaluate`` as a list: one ImageMetadata per image, else a LogicResultError.

    An ``ImagesMetadata`` (what the reference's logics return) is accepted and unwrapped.
    """
    name = type(logic).__name__
    if isinstance(result, ImagesMetadata):
        result = result.items
    if not isinstance(result, Sequence) or isinstance(result, (str, bytes)):
        raise LogicResultError(
            f'{name}.batch_evaluate returned {type(result).__name__}, expected a list of ImageMetadata'
        )
    items = list(result)
    if len(items) != expected:
        raise LogicResultError(f'{name}.batch_evaluate returned {len(items)} results for {expected} images')
    for index, item in enumerate(items):
        if not isinstance(item, ImageMetadata):
            raise LogicResultError(
                f'{name}.batch_evaluate returned {type(item).__name__} at index {index}, expected ImageMetadata'
            )
    return items


def run_batch(logic: DetectorLogic, images: list[np.ndarray]) -> list[ImageMetadata]:
    """The checked results of ``logic`` for ``images``, in order: what the inference worker calls.

    A logic that does not override ``batch_evaluate`` is called through ``evaluate`` per image, so an error names
    the method the user wrote. A ``batch_evaluate`` that raises ``NotImplementedError`` (as the reference's sample
    logic does) also falls back to ``evaluate`` per image: the worker combines single requests into batches, and
    those must not fail because the logic never meant to batch.
    """
    if type(logic).batch_evaluate is not DetectorLogic.batch_evaluate:
        try:
            result = logic.batch_evaluate(list(images))
        except NotImplementedError:
            pass
        else:
            return checked_batch(logic, result, len(images))
    return [checked_metadata(logic, logic.evaluate(image)) for image in images]
