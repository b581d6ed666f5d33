"""SVG markup of annotations and detections, drawn in image pixels over a thumbnail or an image.

Built in Python rather than a Jinja macro because the grid draws thousands of shapes per page: a macro call per
shape made a 1,000-image grid page cost about 150 ms more. Every name is escaped; colours were checked before.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape


def _n(value: Any) -> str:
    return str(value) if isinstance(value, int) else f'{float(value):g}'


def _label(shape: dict[str, Any]) -> str:
    confidence = shape.get('confidence')
    text = str(shape.get('category_name') or '')
    if isinstance(confidence, (int, float)) and not isinstance(confidence, bool):
        text += f' {confidence:.2f}'
    return str(escape(text))


def shapes_svg(shapes: dict[str, list[dict[str, Any]]], kind: str, *, labels: bool = False) -> Markup:
    """``<rect>``, ``<circle>`` and ``<polygon>`` elements of class ``kind`` (``annotation`` or ``detection``) for
    the ``boxes``, ``points`` and ``polygons`` of :func:`llnode.localloop.ui.pages.shapes_of`."""
    parts: list[str] = []
    for b in shapes['boxes']:
        x, y, w, h, color, label = _n(b['x']), _n(b['y']), _n(b['width']), _n(b['height']), b['color'], _label(b)
        parts.append(
            f'<rect class="{kind} box" x="{x}" y="{y}" width="{w}" height="{h}" stroke="{color}">'
            f'<title>{label}</title></rect>'
        )
        if labels:
            parts.append(
                f'<text class="label" x="{x}" y="{_n(b["y"] + b["height"] + 16)}" fill="{color}">{label}</text>'
            )
    for p in shapes['points']:
        x, y, color, label = _n(p['x']), _n(p['y']), p['color'], _label(p)
        parts.append(
            f'<circle class="{kind} point" cx="{x}" cy="{y}" r="6" stroke="{color}"><title>{label}</title></circle>'
        )
        if labels:
            parts.append(
                f'<text class="label" x="{_n(p["x"] + 8)}" y="{_n(p["y"] + 20)}" fill="{color}">{label}</text>'
            )
    for g in shapes['polygons']:
        parts.append(
            f'<polygon class="{kind} segmentation" points="{g["points"]}" stroke="{g["color"]}" fill="{g["color"]}"></polygon>'
        )
    return Markup(''.join(parts))
