"""The detector logic API: default batching through evaluate, result checks that name the logic, image checks."""

from __future__ import annotations

import numpy as np
import pytest

from llnode.detector.logic import (
    DetectorFactory,
    DetectorLogic,
    ImageInputError,
    LogicResultError,
    check_image,
    run_batch,
)
from llnode.node.errors import Unprocessable
from llnode.schema import ClassificationDetection, ImageMetadata, ImagesMetadata, ModelInformation

INFO = ModelInformation(id='m1', organization='o', project='p', version='1.2', model_root_path='/models/1.2')


class WidthLogic(DetectorLogic):
    """Tags each result with the image width, so tests see which result belongs to which image."""

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        return ImageMetadata(tags=[f'w{image.shape[1]}'])


def image(width: int) -> np.ndarray:
    return np.zeros((4, width, 3), np.uint8)


def test_default_batch_evaluate_calls_evaluate_per_image_in_order() -> None:
    logic = WidthLogic(INFO)
    results = logic.batch_evaluate([image(1), image(2), image(3)])
    assert [r.tags for r in results] == [['w1'], ['w2'], ['w3']]
    assert [r.tags for r in run_batch(logic, [image(5), image(6)])] == [['w5'], ['w6']]
    assert logic.model_folder is not None and logic.model_folder.as_posix() == '/models/1.2'
    assert not DetectorLogic.thread_safe
    logic.close()  # the default close does nothing and does not fail


def test_logic_without_evaluate_says_what_is_missing() -> None:
    with pytest.raises(NotImplementedError, match=r'DetectorLogic must implement evaluate'):
        DetectorLogic(INFO).evaluate(image(1))
    with pytest.raises(TypeError, match='ModelInformation'):
        WidthLogic({'id': 'm1'})  # type: ignore[arg-type]


class WrongEvaluate(DetectorLogic):
    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        return {'box_detections': []}  # type: ignore[return-value]


class WrongBatchType(WidthLogic):
    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        return ImageMetadata()  # type: ignore[return-value]


class ShortBatch(WidthLogic):
    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        return [ImageMetadata()] * (len(images) - 1)


class WrongItem(WidthLogic):
    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        return [ImageMetadata(), 'oops']  # type: ignore[list-item]


def test_wrong_results_are_clear_errors_naming_the_logic() -> None:
    with pytest.raises(LogicResultError, match=r'WrongEvaluate\.evaluate returned dict, expected ImageMetadata'):
        run_batch(WrongEvaluate(INFO), [image(1)])
    with pytest.raises(LogicResultError, match=r'WrongBatchType\.batch_evaluate returned ImageMetadata'):
        run_batch(WrongBatchType(INFO), [image(1), image(2)])
    with pytest.raises(LogicResultError, match=r'ShortBatch\.batch_evaluate returned 1 results for 2 images'):
        run_batch(ShortBatch(INFO), [image(1), image(2)])
    with pytest.raises(LogicResultError, match=r'WrongItem\.batch_evaluate returned str at index 1'):
        run_batch(WrongItem(INFO), [image(1), image(2)])


class ReferenceStyle(WidthLogic):
    """Ported from the reference: batch_evaluate answers ImagesMetadata."""

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        items = [ImageMetadata(classification_detections=[ClassificationDetection('c', '1.2', 0.5)]) for _ in images]
        return ImagesMetadata(items=items)  # type: ignore[return-value]


class NoBatches(WidthLogic):
    """Like the reference's mock: batch_evaluate raises NotImplementedError."""

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        raise NotImplementedError


def test_reference_style_batch_results_and_missing_batching_are_accepted() -> None:
    results = run_batch(ReferenceStyle(INFO), [image(1), image(2)])
    assert len(results) == 2 and all(len(r.classification_detections) == 1 for r in results)
    assert [r.tags for r in run_batch(NoBatches(INFO), [image(7), image(8)])] == [['w7'], ['w8']]


def test_factory_needs_a_model_format_and_a_build() -> None:
    class Factory(DetectorFactory):
        model_format = 'mocked'

        def build(self, model_info: ModelInformation) -> DetectorLogic:
            return WidthLogic(model_info)

    assert Factory().model_format == 'mocked'
    assert Factory('onnx').model_format == 'onnx'
    assert isinstance(Factory().build(INFO), WidthLogic)
    with pytest.raises(ValueError, match='needs a model_format'):
        DetectorFactory()
    with pytest.raises(ValueError, match='needs a model_format'):
        DetectorFactory('  ')
    with pytest.raises(NotImplementedError, match='must implement build'):
        DetectorFactory('x').build(INFO)


@pytest.mark.parametrize(
    ('value', 'message'),
    [
        ([[1, 2]], 'must be a numpy array, got list'),
        (np.zeros((2, 3, 4, 1), np.uint8), 'shape HxW or HxWxC'),
        (np.zeros(5, np.uint8), 'shape HxW or HxWxC'),
        (np.zeros((2, 3, 2), np.uint8), '1, 3 or 4 channels'),
        (np.zeros((0, 3, 3), np.uint8), 'is empty'),
    ],
)
def test_bad_images_are_refused_with_a_422_error(value: object, message: str) -> None:
    with pytest.raises(ImageInputError, match=message) as caught:
        check_image(value)
    assert isinstance(caught.value, Unprocessable) and isinstance(caught.value, ValueError)
    assert caught.value.status == 422


def test_good_images_pass_unchanged() -> None:
    for shape in [(3, 4), (3, 4, 1), (3, 4, 3), (3, 4, 4)]:
        array = np.zeros(shape, np.uint8)
        assert check_image(array) is array
