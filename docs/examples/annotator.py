"""The annotation tool of the annotator guide: drag a rectangle, release, and it is saved as a segmentation."""

import logging
import os
import sys
import uuid

from llnode.annotator import (
    AnnotationEventType,
    AnnotatorLogic,
    AnnotatorNode,
    Point,
    SegmentationAnnotation,
    Shape,
    ToolOutput,
)


class RectangleTool(AnnotatorLogic):
    """Left mouse down starts a rectangle, moving draws it, left mouse up saves it as a four-point shape."""

    def create_empty_history(self):
        return {'start': None}

    def handle_user_input(self, user_input, history):
        data = user_input.data
        x, y = int(data.coordinate.x), int(data.coordinate.y)
        if data.event_type == AnnotationEventType.LEFT_MOUSE_DOWN:
            history['start'] = (x, y)
        if history['start'] is None:
            return ToolOutput(svg='')
        (x0, y0), color = history['start'], data.category.color or 'red'
        corners = [(x0, y0), (x, y0), (x, y), (x0, y)]
        svg = '<polygon points="{}" fill="none" stroke="{}"/>'.format(
            ' '.join(f'{px},{py}' for px, py in corners), color
        )
        if data.event_type != AnnotationEventType.LEFT_MOUSE_UP:
            return ToolOutput(svg=svg)
        history['start'] = None
        annotation = SegmentationAnnotation(
            id=str(uuid.uuid4()),
            shape=Shape(points=[Point(x=px, y=py) for px, py in corners]),
            image_id=data.image_uuid,
            category_id=data.category.id,
        )
        return ToolOutput(svg=svg, annotation=annotation)  # the node sends the annotation to the Loop


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    node = AnnotatorNode('rectangle tool', RectangleTool())
    sys.exit(node.serve(host='127.0.0.1', port=int(os.environ.get('PORT', '8003'))))
