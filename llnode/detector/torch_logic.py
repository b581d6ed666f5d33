"""A detector logic for torch models: the user says how to load the module and how to read its outputs.

Why: every torch detector repeats the same plumbing (device choice, eval mode, ``inference_mode``, half precision,
resizing to the model's input size, batching, scaling boxes back) and gets some of it subtly wrong. Here the user
writes two hooks:

- ``load_module(model_folder, model_info, device) -> torch.nn.Module``: build the network from the model's files;
- ``to_detections(outputs, batch) -> list[ImageMetadata]``: turn the module's outputs for one batch into one
  ImageMetadata per image; ``batch.images[i]`` (an :class:`ImageGeometry`) maps model-input coordinates back to
  the original image's pixels.

Optional hooks: ``normalize(batch)`` (e.g. mean/std; the default leaves RGB in 0..1) and ``forward(batch)`` (the
default calls the module). Input images (``HxW``, ``HxWx1``, ``HxWx3`` RGB, ``HxWx4`` RGBA, uint8) become one RGB
float tensor ``N x 3 x R x R`` on the device, each image resized with ``torch.nn.functional.interpolate`` to the
square ``model_info.resolution`` R. torch is imported only when this logic is used, never at ``import llnode``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from llnode.detector.logic import DetectorLogic, ImageInputError, LogicResultError, check_image, checked_batch
from llnode.schema import ImageMetadata, ModelInformation

if TYPE_CHECKING:
    import torch

logger = logging.getLogger('llnode.detector.torch')


def choose_device(device: str | torch.device = 'auto') -> torch.device:
    """``'auto'``: CUDA when available, else CPU; anything else is taken as asked and checked to exist."""
    import torch

    if isinstance(device, str) and device.strip().lower() == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f'unknown torch device {device!r}: {error}') from None
    if chosen.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {device!r} asked for, but CUDA is not available here')
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f'device {device!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist')
    return chosen


@dataclass(frozen=True)
class ImageGeometry:
    """One image of a batch: its original size and the square model input it was resized to.

    Model coordinates times ``scale_x``/``scale_y`` give original pixel coordinates.
    """

    width: int
    height: int
    resolution: int

    @property
    def scale_x(self) -> float:
        return self.width / self.resolution

    @property
    def scale_y(self) -> float:
        return self.height / self.resolution

    def box_to_image(self, x: float, y: float, width: float, height: float) -> tuple[int, int, int, int]:
        """A box ``(x, y, width, height)`` in model pixels as integer original pixels, clipped to the image."""
        left = min(max(x * self.scale_x, 0.0), float(self.width))
        top = min(max(y * self.scale_y, 0.0), float(self.height))
        right = min(max((x + width) * self.scale_x, 0.0), float(self.width))
        bottom = min(max((y + height) * self.scale_y, 0.0), float(self.height))
        x0, y0, x1, y1 = (math.floor(v + 0.5) for v in (left, top, right, bottom))  # half up, not to even
        return x0, y0, x1 - x0, y1 - y0

    def point_to_image(self, x: float, y: float) -> tuple[float, float]:
        """A point in model pixels as original pixels (not clipped: a point detection is a centre)."""
        return x * self.scale_x, y * self.scale_y


@dataclass(frozen=True)
class BatchMeta:
    """What ``to_detections`` needs beside the outputs: per-image geometry, in input order, and the model."""

    images: tuple[ImageGeometry, ...]
    resolution: int
    model_info: ModelInformation

    @property
    def model_name(self) -> str:
        """What detections carry as ``model_name`` (the model version, as the reference does)."""
        return self.model_info.version

    def __len__(self) -> int:
        return len(self.images)


class TorchDetectorLogic(DetectorLogic):
    """A :class:`DetectorLogic` around a ``torch.nn.Module``; subclass it and write ``load_module`` and
    ``to_detections``.

    ``device``: ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...
    ``half``: run in float16, only on CUDA (ignored on CPU, where it is slow or unsupported).
    ``resolution``: the square input side; defaults to ``model_info.resolution``.
    ``model_folder``: where the model's files are; defaults to ``model_info.model_root_path``.
    Not thread-safe (one module, one device): the inference worker serialises calls.
    """

    #: the ``mode`` given to ``torch.nn.functional.interpolate`` when resizing inputs
    resize_mode: ClassVar[str] = 'bilinear'

    def __init__(
        self,
        model_info: ModelInformation,
        *,
        device: str | torch.device = 'auto',
        half: bool = False,
        resolution: int | None = None,
        model_folder: str | Path | None = None,
    ) -> None:
        super().__init__(model_info)
        import torch

        side = resolution if resolution is not None else model_info.resolution
        if not isinstance(side, int) or isinstance(side, bool) or side < 1:
            raise ValueError(
                f'{type(self).__name__} needs a positive input resolution (model.json "resolution" or the '
                f'resolution argument), got {side!r}'
            )
        self.resolution = side
        folder = Path(model_folder) if model_folder is not None else self.model_folder
        if folder is None:
            raise ValueError(f'{type(self).__name__} needs a model folder (model_info.model_root_path is not set)')
        self.device = choose_device(device)
        self.half = bool(half) and self.device.type == 'cuda'
        if half and not self.half:
            logger.info(
                '%s: half precision is only used on CUDA; running float32 on %s', type(self).__name__, self.device
            )
        module = self.load_module(folder, model_info, self.device)
        if not isinstance(module, torch.nn.Module):
            raise LogicResultError(
                f'{type(self).__name__}.load_module returned {type(module).__name__}, expected a torch.nn.Module'
            )
        module = module.to(self.device)
        if self.half:
            module = module.half()
        module.eval()
        self._module: torch.nn.Module | None = module

    # ----------------------------------------------------------------------------------------------------------
    # Hooks

    def load_module(self, model_folder: Path, model_info: ModelInformation, device: torch.device) -> torch.nn.Module:
        """The network, built from the files in ``model_folder`` (load weights with ``map_location=device``)."""
        raise NotImplementedError(f'{type(self).__name__} must implement load_module(model_folder, model_info, device)')

    def to_detections(self, outputs: Any, batch: BatchMeta) -> list[ImageMetadata]:
        """One ImageMetadata per image of ``batch``, in order, from the module's ``outputs`` for the whole batch."""
        raise NotImplementedError(f'{type(self).__name__} must implement to_detections(outputs, batch)')

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's input normalisation of an ``N x 3 x R x R`` RGB batch in 0..1; the default keeps it."""
        return batch

    def forward(self, batch: torch.Tensor) -> Any:
        """The module's outputs for ``batch`` (runs under ``torch.inference_mode``)."""
        return self.module(batch)

    # ----------------------------------------------------------------------------------------------------------
    # Inference

    @property
    def module(self) -> torch.nn.Module:
        """The loaded module (in eval mode, on ``self.device``)."""
        if self._module is None:
            raise RuntimeError(f'{self!r} is closed')
        return self._module

    def prepare_batch(self, images: list[np.ndarray]) -> tuple[torch.Tensor, BatchMeta]:
        """The stacked, resized, normalised input tensor for ``images`` and their geometry."""
        import torch
        from torch.nn import functional

        side = self.resolution
        tensors = []
        geometries = []
        for index, image in enumerate(images):
            rgb = _as_rgb(image, index)
            tensor = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            if tensor.shape[-2:] != (side, side):
                smooth = self.resize_mode in ('bilinear', 'bicubic')
                tensor = functional.interpolate(
                    tensor,
                    size=(side, side),
                    mode=self.resize_mode,
                    align_corners=False if smooth else None,
                    antialias=smooth,
                )
            tensors.append(tensor)
            geometries.append(ImageGeometry(width=int(image.shape[1]), height=int(image.shape[0]), resolution=side))
        batch = self.normalize(torch.cat(tensors))
        if self.half:
            batch = batch.half()
        return batch, BatchMeta(images=tuple(geometries), resolution=side, model_info=self.model_info)

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        import torch

        if not images:
            return []
        with torch.inference_mode():
            batch, meta = self.prepare_batch(images)
            outputs = self.forward(batch)
            results = self.to_detections(outputs, meta)
        return checked_batch(self, results, len(images))

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        return self.batch_evaluate([image])[0]

    def close(self) -> None:
        """Drop the module and, on CUDA, return cached memory to the driver."""
        self._module = None
        if self.device.type == 'cuda':
            import torch

            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f'<{type(self).__name__} model {self.model_info.version!r} on {self.device}>'


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    """An ``HxWx3`` uint8 array (contiguous, writable for ``torch.from_numpy``) from a gray, RGB or RGBA image."""
    check_image(image, what=f'image {index}')
    if image.dtype != np.uint8:
        raise ImageInputError(f'image {index} must be uint8, got {image.dtype}')
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if not (image.flags.c_contiguous and image.flags.writeable):
        image = np.array(image, order='C', copy=True)
    return image
