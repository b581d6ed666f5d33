"""The control API under ``/control``: what a person does in the Loop's web UI (filled in below)."""

from __future__ import annotations

from flask import Blueprint

control = Blueprint('control', __name__)
