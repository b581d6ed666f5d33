"""Every code example in the documentation either runs in a test or says why it does not.

A ``literalinclude`` must include a file of ``docs/examples/`` that ``tests/docs/test_guides.py`` runs; any other
code block (``.. code-block::``, ``.. code::``, a ``::`` literal block) needs an rst comment right above it (above
its paragraph, for ``::``) of the form ``.. not-run: <the reason>``, e.g. "a server that runs until Ctrl-C; the
guide's test starts the same one". Pages, README.rst and CHANGELOG.rst are checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.docs.test_guides import EXAMPLES, RUN_HERE

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / 'docs'

CODE_DIRECTIVE = re.compile(r'^(\s*)\.\. (code-block|code|sourcecode|doctest)::')
INCLUDE = re.compile(r'^\s*\.\. literalinclude::\s*(\S+)')
MARKER = re.compile(r'^\s*\.\. not-run:\s*\S')


@dataclass
class Problem:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: {self.what}'


def pages() -> list[Path]:
    found = [p for p in DOCS.rglob('*.rst') if '_build' not in p.parts]
    return sorted([*found, REPO / 'README.rst', REPO / 'CHANGELOG.rst'])


def indentation(line: str) -> int:
    return len(line) - len(line.lstrip())


def marked(lines: list[str], start: int) -> bool:
    """Whether the element right above line ``start`` (blank lines skipped) is a ``.. not-run:`` comment."""
    own = indentation(lines[start])
    i = start - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    while i > 0 and indentation(lines[i]) > own:  # continuation lines of a multi-line comment
        i -= 1
    return i >= 0 and indentation(lines[i]) == own and bool(MARKER.match(lines[i]))


def paragraph_start(lines: list[str], i: int) -> int:
    while i > 0 and lines[i - 1].strip() and indentation(lines[i - 1]) == indentation(lines[i]):
        i -= 1
    return i


def problems_in(text: str, path: Path) -> list[Problem]:
    lines = text.split('\n')
    name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    problems: list[Problem] = []
    block_indent: int | None = None  # inside a code or literal block: the indentation of what opened it
    for i, line in enumerate(lines):
        if block_indent is not None:
            if not line.strip() or indentation(line) > block_indent:
                continue
            block_indent = None
        include = INCLUDE.match(line)
        if include:
            target = (path.parent / include.group(1)).resolve()
            if target.parent != EXAMPLES or target.name not in RUN_HERE:
                problems.append(Problem(name, i + 1, f'{include.group(1)} is not an example tests/docs runs'))
            continue
        directive = CODE_DIRECTIVE.match(line)
        if directive:
            if not marked(lines, i):
                problems.append(Problem(name, i + 1, 'code block neither tested nor marked ".. not-run: <reason>"'))
            block_indent = indentation(line)
            continue
        stripped = line.rstrip()
        if stripped.endswith('::') and not stripped.lstrip().startswith('..'):
            following = next((other for other in lines[i + 1 :] if other.strip()), '')
            if following and indentation(following) > indentation(line):
                if not marked(lines, paragraph_start(lines, i)):
                    problems.append(
                        Problem(name, i + 1, 'literal block (::) neither tested nor marked ".. not-run: <reason>"')
                    )
                block_indent = indentation(line)
    return problems


def test_every_code_example_is_tested_or_marked() -> None:
    problems = [p for page in pages() for p in problems_in(page.read_text(), page)]
    assert not problems, '\n'.join(str(p) for p in problems)


def test_the_check_finds_unmarked_blocks_and_accepts_marked_ones() -> None:
    page = DOCS / 'example.rst'
    text = '\n'.join(
        [
            'Title',
            '=====',
            '',
            '.. code-block:: python',
            '',
            '    print(1)',
            '',
            '.. not-run: a fragment, for the test.',
            '',
            '.. code-block:: console',
            '',
            '    $ true',
            '',
            'A paragraph that shows',
            'a literal block::',
            '',
            '    text',
            '',
            '.. not-run: long reason',
            '   over two lines.',
            '',
            'Marked paragraph::',
            '',
            '    text',
            '',
            '.. literalinclude:: examples/detector.py',
            '.. literalinclude:: ../setup.cfg',
        ]
    )
    found = [(p.line, p.what.split(' ')[0]) for p in problems_in(text, page)]
    assert found == [(4, 'code'), (15, 'literal'), (27, '../setup.cfg')]
