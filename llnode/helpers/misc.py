"""The reference's ``helpers/misc.get_free_memory_mb`` (yolov5_node sizes its batches with it)."""

from __future__ import annotations

from llnode.trainer.cuda import get_free_memory_mb

__all__ = ['get_free_memory_mb']
