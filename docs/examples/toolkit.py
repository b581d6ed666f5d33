"""The toolkit page's examples, run as one script: what each function gives on the reference's documented inputs.

``tests/docs/test_guides.py`` runs it and compares what it prints with what the page says.
"""

import os
from collections.abc import Callable, Iterator

import numpy as np

from llnode.detector.postprocess import post_process, to_image_metadata
from llnode.helpers.entrypoint import node_parser
from llnode.schema import Category, ModelInformation
from llnode.trainer.batch_size import dataset_limit, find_batch_size, no_gpu_batch_size, requested_batch_size
from llnode.trainer.exceptions import CriticalError
from llnode.trainer.metrics import confusion_matrix_from_counts, macro_f1
from llnode.trainer.subprocess import iterator_cpu_bound
from llnode.trainer.validation_set import assign_validation_set


def batch_sizes() -> None:
    def fits_up_to(largest: int, tried: list[int]) -> Callable[[int], bool]:
        """A stand-in for a training step on the GPU: every size up to ``largest`` fits."""

        def fits(size: int) -> bool:
            tried.append(size)
            return size <= largest

        return fits

    print('limit 1024, sizes up to 300 fit:', find_batch_size(fits_up_to(300, []), limit=1024))
    print('limit and request 200, all fit:', find_batch_size(fits_up_to(10**6, []), limit=200, candidate=200))
    tried: list[int] = []
    size = find_batch_size(fits_up_to(511, tried), limit=1000, candidate=1000)
    print('limit and request 1000, 512 does not fit:', size, 'after trying', tried)
    tried = []
    size = find_batch_size(fits_up_to(10**6, tried), limit=dataset_limit(100))
    print('100 images, dataset limit', dataset_limit(100), '->', size, 'after trying', tried)
    for value in ('', None, '16'):
        print(f'max_batch_size {value!r}:', requested_batch_size({'max_batch_size': value}))
    print('max_batch_size absent:', requested_batch_size({}))
    try:
        requested_batch_size({'max_batch_size': '16.0'})
    except ValueError as e:
        print('ValueError:', e)
    print('without a GPU:', no_gpu_batch_size(1024), 'or, for a limit of 5,', no_gpu_batch_size(5))


def validation_split() -> None:
    images = [{'id': f'image-{i:03}', 'set': 'train'} for i in range(200)]
    assign_validation_set(images, {'compute_validation_set': True})
    val = [image['id'] for image in images if image['set'] == 'val']
    print(f'{len(val)} of {len(images)} train images become val')

    more = [{'id': image['id'], 'set': 'train'} for image in images]  # the next training: the same images ...
    more += [{'id': f'new-{i:03}', 'set': 'train'} for i in range(50)]  # ... and 50 that arrived since
    assign_validation_set(more, {'compute_validation_set': True})
    print('the same ones again:', val == [image['id'] for image in more[:200] if image['set'] == 'val'])
    try:
        assign_validation_set(images, {'compute_validation_set': 'yes'})
    except CriticalError as e:
        print('CriticalError:', e)


def metrics() -> None:
    matrix = confusion_matrix_from_counts(tp={'cat': 8, 'dog': 1}, fp={'cat': 2}, fn={'dog': 3, 'cow': 0})
    print(matrix)
    print(f'macro F1: {macro_f1(matrix):.3f}')  # (0.889 + 0.4 + 0) / 3: 'cow' has no counts and scores 0


def squares_of(count: int, size: int) -> Iterator[np.ndarray]:
    """Stands in for decoding and resizing images: CPU work that should not hold the node's GIL."""
    for i in range(count):
        yield np.full((size, size), i, dtype=np.int64) ** 2


def prepared_in_another_process() -> None:
    with iterator_cpu_bound(squares_of, 4, size=64) as images:  # squares_of: a module-level generator function
        print('sums:', [int(image.sum()) for image in images])


def detections() -> None:
    model_info = ModelInformation(
        id='model-1',
        organization='zauberzeug',
        project='demo',
        version='1.2',
        categories=[Category(id='c-0', name='cat', type='box'), Category(id='c-1', name='eye', type='point')],
    )
    boxes_xyxy = np.array(
        [
            [10, 10, 110, 60],  # cat, 0.9
            [12, 11, 112, 61],  # cat, 0.8: overlaps the first one, suppressed by the NMS
            [300, 200, 330, 260],  # cat, 0.2: not above the threshold
            [-5, 40, 20, 60],  # eye, 0.7: a point category, sent as the box's centre (clamped to the image)
            [200, 100, 201, 150],  # cat, 0.6: 1 pixel wide, dropped
        ],
        dtype=float,
    )
    scores = np.array([0.9, 0.8, 0.2, 0.7, 0.6])
    classes = np.array([0, 0, 0, 1, 0])
    predictions = post_process(
        boxes_xyxy, scores, classes, conf_threshold=0.2, iou_threshold=0.45, origin_h=240, origin_w=320
    )
    print('kept:', [(p.category_index, p.confidence) for p in predictions])
    metadata = to_image_metadata(predictions, model_info, 240, 320)
    for box in metadata.box_detections:
        print('box:', box.category_name, box.x, box.y, box.width, box.height, box.confidence)
    for point in metadata.point_detections:
        print('point:', point.category_name, point.x, point.y, point.confidence)


def entry_point() -> None:
    parser = node_parser(description='YOLO detector')
    parser.add_argument('--conf-threshold', type=float, default=0.2)  # also CONF_THRESHOLD
    print('default:', parser.parse_args([]).conf_threshold)
    os.environ['CONF_THRESHOLD'] = '0.35'  # as a container's environment would set it
    print('from CONF_THRESHOLD:', parser.parse_args([]).conf_threshold)
    print('the command line wins:', parser.parse_args(['--conf-threshold', '0.5']).conf_threshold)
    args = parser.parse_args([])
    print('host and port:', args.host, args.port)


if __name__ == '__main__':
    batch_sizes()
    validation_split()
    metrics()
    prepared_in_another_process()
    detections()
    entry_point()
