"""The annotator's user API: an interactive tool that answers the Loop UI's mouse and key events.

A tool subclasses :class:`AnnotatorLogic` and implements one hook, :meth:`AnnotatorLogic.handle_user_input`. The
node keeps one *history* per frontend (a browser tab of the Loop's UI), created by
:meth:`AnnotatorLogic.create_empty_history`, and hands it to every event of that frontend, one event at a time
and in the order they came. Escape (``key_up == 'Escape'``) and ``user_logout`` reset it without asking the tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from llnode.schema import ToolOutput, UserInput

if TYPE_CHECKING:
    from llnode.annotator.node import AnnotatorNode


class AnnotatorLogic:
    """Base class of an annotation tool; ``AnnotatorNode('my tool', MyTool()).serve(port=8003)`` runs it.

    Declare what the tool offers in ``capabilities`` (sent to the Loop in every ``update_annotation_node``;
    the reference always sends ``['segmentation']``). Set ``thread_safe = True`` when ``handle_user_input`` may
    run for several frontends at the same time (it then must keep per-user state in the history only);
    otherwise the node calls the tool for one event at a time.
    """

    #: What the tool can do, reported to the Loop (``update_annotation_node``'s ``capabilities``).
    capabilities: ClassVar[Sequence[str]] = ('segmentation',)
    #: Whether ``handle_user_input`` may run for different frontends at once (one frontend is always serial).
    thread_safe: ClassVar[bool] = False

    _node: AnnotatorNode | None = None

    def handle_user_input(self, user_input: UserInput, history: Any) -> ToolOutput:
        """Answer one event of one frontend: an SVG fragment to overlay and, when done, an annotation.

        ``history`` is this frontend's object from :meth:`create_empty_history`; change it in place to keep state
        between events. The image ``user_input.data.image_uuid`` is on disk at :meth:`image_path` before this is
        called. A returned ``annotation`` is sent to the Loop (``update_segmentation_annotation``) before the SVG
        is answered. An exception answers the event with ``success: false`` and resets the history.
        """
        raise NotImplementedError(f'{type(self).__name__} must implement handle_user_input(user_input, history)')

    def create_empty_history(self) -> Any:
        """A new history for a frontend (its first event, after Escape, after logout); called once per reset."""
        return {}

    def logout_user(self, frontend_id: str) -> bool:
        """The user of ``frontend_id`` logged out (its history is already gone); the result is the ack's success."""
        return True

    # ------------------------------------------------------------------ what the node gives the tool

    @property
    def node(self) -> AnnotatorNode | None:
        """The node that runs this tool (set when the node is created), or None."""
        return self._node

    def image_path(self, user_input: UserInput) -> Path:
        """Where the image of ``user_input`` lies: ``{data_folder}/{org}/{project}/images/{image_uuid}.jpg``."""
        node = self._node
        if node is None:
            raise RuntimeError(f'{type(self).__name__} is not run by an AnnotatorNode; image_path() needs one')
        data = user_input.data
        return node.image_path(data.context.organization, data.context.project, data.image_uuid)
