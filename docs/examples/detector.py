"""The detector of the detector guide: boxes the darkest area of each image, for the Loop's ``mocked`` models."""

import logging
import os
import sys

import numpy as np

from llnode.detector import DetectorFactory, DetectorLogic, DetectorNode
from llnode.schema import BoxDetection, ImageMetadata, ModelInformation


class DarkestAreaLogic(DetectorLogic):
    """A stand-in for a real model: one box around the pixels much darker than the image's mean."""

    thread_safe = True  # evaluate() keeps no state, so the node may call it from several threads at once

    def __init__(self, model_info: ModelInformation) -> None:
        super().__init__(model_info)
        # A real logic loads its weights here, from the files in self.model_folder.
        self.files = sorted(path.name for path in self.model_folder.iterdir())
        boxes = [c for c in model_info.categories if c.type == 'box']
        self.category = boxes[0] if boxes else None

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        result = ImageMetadata()
        if self.category is None:
            return result
        gray = image[..., :3].mean(axis=-1) if image.ndim == 3 else image
        ys, xs = np.nonzero(gray < gray.mean() - 2 * gray.std())
        if len(xs) > 0:
            result.box_detections.append(
                BoxDetection(
                    category_name=self.category.name,
                    x=int(xs.min()),
                    y=int(ys.min()),
                    width=int(xs.max() - xs.min() + 1),
                    height=int(ys.max() - ys.min() + 1),
                    model_name=self.model_info.version,
                    confidence=0.5,
                    category_id=self.category.id,
                )
            )
        return result


class DarkestAreaFactory(DetectorFactory):
    model_format = 'mocked'  # the format the demo project's models have

    def build(self, model_info: ModelInformation) -> DarkestAreaLogic:
        return DarkestAreaLogic(model_info)


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    node = DetectorNode('darkest area detector', DarkestAreaFactory())
    sys.exit(node.serve(host='127.0.0.1', port=int(os.environ.get('PORT', '8004'))))
