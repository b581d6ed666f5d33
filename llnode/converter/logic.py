"""What a converter author writes: a :class:`ConverterLogic` that turns one model format into another.

The node does everything around it (listing, download, upload, retries, status); the logic only converts the
files of one downloaded model. It runs in the node's conversion worker thread, one model at a time.
"""

from __future__ import annotations

import abc
import re
import threading
from pathlib import Path

#: Format names go into URL paths (``…/models/{id}/{format}/file``), so they are plain names.
_FORMAT = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


def check_format(value: object, what: str = 'format') -> str:
    """``value`` if it is a usable model format name, else :class:`ValueError` saying why."""
    if not isinstance(value, str) or not _FORMAT.match(value):
        raise ValueError(
            f'{what} must be a name of letters, digits, ".", "_" or "-" (not starting with one of those), got {value!r}'
        )
    return value


class ConverterLogic(abc.ABC):
    """Converts models from ``source_format`` to ``target_format``; subclass it and write :meth:`convert`.

    ``convert`` may take long. It should look at :attr:`stop_requested` now and then and return (or raise)
    when it is set: the node is shutting down and waits only a bounded time for the conversion to end. A logic
    object serves one node: the flag stays set once that node stopped.
    """

    def __init__(self, source_format: str, target_format: str) -> None:
        self.source_format = check_format(source_format, 'source_format')
        self.target_format = check_format(target_format, 'target_format')
        if self.source_format == self.target_format:
            raise ValueError(f'source and target format are both {source_format!r}; nothing to convert')
        self._stop = threading.Event()

    @abc.abstractmethod
    def convert(self, model_folder: Path, out_folder: Path) -> list[Path]:
        """Convert the model in ``model_folder`` and return the files of the converted model.

        ``model_folder`` holds the downloaded source model, its ``model.json`` included (categories, resolution,
        version). ``out_folder`` is an empty folder for the results. The returned files (usually in
        ``out_folder``) must exist, be non-empty and have distinct names; ``model.json`` must not be among them:
        the node uploads one made from the source model's ``model.json``. Raise to report a failed conversion;
        the node retries it later with back-off and gives up after its ``max_attempts``.
        """

    @property
    def capabilities(self) -> list[str]:
        """What the converter status announces to the Loop (default: ``['<source>-><target>']``)."""
        return [f'{self.source_format}->{self.target_format}']

    @property
    def stop_requested(self) -> bool:
        """True once the node is stopping: a long conversion should end soon."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Called by the node when it stops (sets :attr:`stop_requested`)."""
        self._stop.set()

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.source_format} -> {self.target_format}>'
