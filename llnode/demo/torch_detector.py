"""The detector side of the demo: serving ``shapes_torch`` models (:mod:`llnode.demo.shapes_net`) with llnode's
torch logic.

:class:`ShapesDetectorFactory` is what a :class:`~llnode.detector.DetectorNode` gets; for each model version it
builds a :class:`ShapesDetectorLogic`, a :class:`~llnode.detector.torch_logic.TorchDetectorLogic` whose two hooks
load the network from ``shapes_net.json`` + ``model.pt`` and turn its heat-map peaks into box detections. The
logic takes the input side from ``shapes_net.json`` (the network's own), so a model.json without ``resolution``
still serves. torch is imported when a model is built, not when this module is imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llnode.detector.logic import DetectorFactory
from llnode.detector.torch_logic import BatchMeta, TorchDetectorLogic
from llnode.schema import BoxDetection, ImageMetadata, ModelInformation

if TYPE_CHECKING:
    import torch

    from llnode.demo.shapes_net import NetConfig

logger = logging.getLogger('llnode.demo.detector')

MODEL_FORMAT = 'shapes_torch'  # the same as shapes_net.MODEL_FORMAT, without importing torch here


def _model_folder(model_info: ModelInformation, model_folder: str | Path | None) -> Path:
    folder = model_folder if model_folder is not None else model_info.model_root_path
    if not folder:
        raise ValueError('a shapes_torch model needs its folder (model_info.model_root_path or model_folder)')
    return Path(folder)


class ShapesDetectorLogic(TorchDetectorLogic):
    """One loaded ShapesNet. ``threshold`` (heat-map confidence, 0..1) defaults to the one stored with the model;
    ``device`` as for :class:`TorchDetectorLogic` (``'auto'``: CUDA when there is one)."""

    def __init__(
        self,
        model_info: ModelInformation,
        *,
        device: str | torch.device = 'auto',
        threshold: float | None = None,
        model_folder: str | Path | None = None,
        max_detections: int | None = None,
    ) -> None:
        from llnode.demo import shapes_net

        folder = _model_folder(model_info, model_folder)
        self.config: NetConfig = shapes_net.NetConfig.load(folder / shapes_net.CONFIG_FILE)
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f'threshold must be between 0 and 1, got {threshold!r}')
        self.threshold = float(threshold) if threshold is not None else self.config.threshold
        self.max_detections = max_detections or shapes_net.DEFAULT_MAX_DETECTIONS
        if model_info.resolution not in (None, self.config.resolution):
            logger.warning(
                'model %s: model.json says resolution %s, the network takes %d; using %d',
                model_info.version,
                model_info.resolution,
                self.config.resolution,
                self.config.resolution,
            )
        self._names = {c.id: c.name for c in model_info.categories}
        super().__init__(model_info, device=device, resolution=self.config.resolution, model_folder=folder)

    def load_module(self, model_folder: Path, model_info: ModelInformation, device: torch.device) -> torch.nn.Module:
        from llnode.demo import shapes_net

        return shapes_net.load_model(model_folder, device)

    def to_detections(self, outputs: Any, batch: BatchMeta) -> list[ImageMetadata]:
        from llnode.demo import shapes_net

        raw = shapes_net.decode(
            outputs, len(self.config.category_ids), threshold=self.threshold, max_detections=self.max_detections
        )
        results = []
        for boxes, geometry in zip(raw, batch.images, strict=True):
            detections = []
            for box in boxes:
                x, y, width, height = geometry.box_to_image(box.x, box.y, box.width, box.height)
                if width <= 0 or height <= 0:
                    continue
                category_id = self.config.category_ids[box.channel]
                name = self._names.get(category_id) or self.config.category_names[box.channel]
                detections.append(
                    BoxDetection(
                        category_name=name,
                        x=x,
                        y=y,
                        width=width,
                        height=height,
                        model_name=batch.model_name,
                        confidence=round(box.confidence, 4),
                        category_id=category_id,
                    )
                )
            results.append(ImageMetadata(box_detections=detections))
        return results


class ShapesDetectorFactory(DetectorFactory):
    """Builds a :class:`ShapesDetectorLogic` for every ``shapes_torch`` model the detector installs."""

    model_format = MODEL_FORMAT

    def __init__(self, *, device: str = 'auto', threshold: float | None = None) -> None:
        super().__init__()
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f'threshold must be between 0 and 1, got {threshold!r}')
        self.device = device
        self.threshold = threshold

    def build(self, model_info: ModelInformation) -> ShapesDetectorLogic:
        return ShapesDetectorLogic(model_info, device=self.device, threshold=self.threshold)
