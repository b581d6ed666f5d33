"""The YOLO-style detector: serves the TorchScript export the trainer uploads (format ``yolo_style_torchscript``),
built the way yolov5_node's ``Yolov5Detector`` is, on llnode's :class:`~llnode.detector.torch_logic.TorchDetectorLogic`.

``build`` loads the downloaded export (``torch.jit.load``: the network travels in the file; only the decoding of
its head, ``network.raw_boxes``, is code of the sample), checks with a warm-up pass that its classes are the
model's categories, and the logic turns raw boxes into detections with the
toolkit: ``post_process`` (strict confidence threshold, per-class greedy NMS, clipping) and ``to_image_metadata``
(category by index, ``MIN_BOX_SIZE``, point categories as box centres). ``half=True`` runs float16 on CUDA.
Each image of a batch is clipped to its own size (the batch may mix cameras).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llnode.detector.logic import DetectorFactory, LogicResultError
from llnode.detector.postprocess import post_process, to_image_metadata
from llnode.detector.torch_logic import BatchMeta, TorchDetectorLogic
from llnode.schema import ImageMetadata, ModelInformation

if TYPE_CHECKING:
    import torch

logger = logging.getLogger('yolo_style.detector')

TORCHSCRIPT_FORMAT = 'yolo_style_torchscript'
TORCHSCRIPT_FILE = 'model.torchscript'
#: the thresholds yolov5_node's detector defaults to (env CONF_THRESHOLD, IOU_THRESHOLD in the sample's main);
#: without CONF_THRESHOLD a model's own ``conf_threshold`` (model.json, from its training) comes first
CONF_THRESHOLD = 0.2
IOU_THRESHOLD = 0.45
#: warm-up passes after loading (the first passes on CUDA are slow)
WARMUP = 2


class YoloDetector(TorchDetectorLogic):
    """One loaded export; ``conf_threshold`` / ``iou_threshold`` as for ``post_process`` (``conf_threshold=None``:
    the model's own from model.json, else :data:`CONF_THRESHOLD`)."""

    def __init__(
        self,
        model_info: ModelInformation,
        *,
        conf_threshold: float | None = None,
        iou_threshold: float = IOU_THRESHOLD,
        device: str = 'auto',
        half: bool = False,
    ) -> None:
        if conf_threshold is None:
            conf_threshold = model_info.conf_threshold if model_info.conf_threshold is not None else CONF_THRESHOLD
        self.conf_threshold = float(conf_threshold)
        self.iou_threshold = iou_threshold
        super().__init__(model_info, device=device, half=half)
        self._warm_up()

    def load_module(self, model_folder: Path, model_info: ModelInformation, device: torch.device) -> torch.nn.Module:
        import torch

        path = model_folder / TORCHSCRIPT_FILE
        if not path.is_file():
            raise FileNotFoundError(f'model {model_info.version} has no {TORCHSCRIPT_FILE} in {model_folder}')
        module: torch.nn.Module = torch.jit.load(str(path), map_location=device)
        return module

    def _warm_up(self) -> None:
        """A few passes on a blank image; the output must have one channel per category (plus 4 box values)."""
        import numpy as np
        import torch

        blank = np.zeros((self.resolution, self.resolution, 3), dtype=np.uint8)
        for _ in range(WARMUP):
            batch, _meta = self.prepare_batch([blank])
            with torch.inference_mode():
                outputs = self.forward(batch)
        classes = int(outputs.shape[1]) - 4
        if classes != len(self.model_info.categories):
            raise LogicResultError(
                f'model {self.model_info.version} predicts {classes} classes but has '
                f'{len(self.model_info.categories)} categories in model.json'
            )

    def to_detections(self, outputs: Any, batch: BatchMeta) -> list[ImageMetadata]:
        import network

        sizes = [(image.width, image.height) for image in batch.images]
        raw = network.raw_boxes(outputs.float(), sizes, batch.resolution, conf_floor=self.conf_threshold)
        results = []
        for (boxes, scores, labels), (width, height) in zip(raw, sizes, strict=True):
            predictions = post_process(
                boxes,
                scores,
                labels,
                conf_threshold=self.conf_threshold,
                iou_threshold=self.iou_threshold,
                origin_h=height,
                origin_w=width,
            )
            results.append(to_image_metadata(predictions, self.model_info, height, width))
        return results


class YoloDetectorFactory(DetectorFactory):
    """Builds a :class:`YoloDetector` for every ``yolo_style_torchscript`` model the node installs."""

    model_format = TORCHSCRIPT_FORMAT

    def __init__(
        self,
        *,
        conf_threshold: float | None = None,
        iou_threshold: float = IOU_THRESHOLD,
        device: str = 'auto',
        half: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (('conf_threshold', conf_threshold), ('iou_threshold', iou_threshold)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be between 0 and 1, got {value!r}')
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.device = device
        self.half = half

    def build(self, model_info: ModelInformation) -> YoloDetector:
        return YoloDetector(
            model_info,
            conf_threshold=self.conf_threshold,
            iou_threshold=self.iou_threshold,
            device=self.device,
            half=self.half,
        )
