"""Every llnode name the documentation mentions exists: the imports of its code examples and of its tables, the
dotted ``llnode.…`` names in its text, the toolkit page's table of modules and functions, and each Python code
block at least compiles. A page that names a module or function llnode does not have fails here.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from tests.docs.test_code_blocks import pages

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / 'docs'

PYTHON_BLOCK = re.compile(r'^(\s*)\.\. code-block:: python\s*$')
INLINE = re.compile(r'``([^`]+)``')
DOTTED = re.compile(r'(?<![\w/.@-])llnode(?:\.[A-Za-z_][A-Za-z0-9_]*)+')  # not a URL's .../llnode.git
#: names that are no module or object: loggers, as a page's log output shows them
LOGGERS = {'llnode.node.http'}
FROM_IMPORT = re.compile(r'from (llnode(?:\.\w+)*) import ([\w, ]+)')


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every ``.. code-block:: python`` of a page, dedented."""
    lines = text.split('\n')
    blocks: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        opened = PYTHON_BLOCK.match(line)
        if not opened:
            continue
        own = len(opened.group(1))
        body: list[str] = []
        for other in lines[i + 1 :]:
            if other.strip() and len(other) - len(other.lstrip()) <= own:
                break
            body.append(other)
        indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        blocks.append((i + 1, '\n'.join(b[indent:] for b in body).strip('\n')))
    return blocks


def resolve(dotted: str) -> object:
    """The object ``llnode.a.b.c`` names: the longest importable module, then attributes."""
    parts = dotted.split('.')
    for end in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module('.'.join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def page_names(text: str) -> set[str]:
    """Every ``llnode.…`` name of a page: imports (``from llnode.x import a, b`` gives ``llnode.x.a`` and
    ``llnode.x.b``) and dotted names, in code blocks and inline literals alike."""
    names: set[str] = set()
    for module, imported in FROM_IMPORT.findall(text):
        names.update(f'{module}.{name.strip()}' for name in imported.split(',') if name.strip())
    names.update(name.rstrip('.') for name in DOTTED.findall(text))
    return names - LOGGERS


@pytest.mark.parametrize('page', pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_llnode_name_of_a_page_exists(page: Path) -> None:
    missing = []
    for name in sorted(page_names(page.read_text())):
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            missing.append(f'{name}: {type(e).__name__}: {e}')
    assert not missing, '\n'.join(missing)


@pytest.mark.parametrize('page', pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_python_block_compiles(page: Path) -> None:
    for line, code in python_blocks(page.read_text()):
        try:
            ast.parse(code)
        except SyntaxError as e:
            pytest.fail(f'{page.name}:{line}: {e}')


def toolkit_table() -> dict[str, set[str]]:
    """The toolkit page's table: module -> the names its second column lists."""
    text = (DOCS / 'toolkit.rst').read_text()
    table = text.split('\n=====')[1:4]  # the rule lines around the header and the body
    rows: dict[str, set[str]] = {}
    module = ''
    for line in '\n'.join(table).split('\n'):
        if not line.strip() or line.lstrip().startswith('='):
            continue
        first, rest = line[:35].strip(), line[35:]
        if first.startswith('``llnode.'):
            module = first.strip('`')
        if module:
            rows.setdefault(module, set()).update(INLINE.findall(rest))
    return rows


def test_the_toolkit_table_names_only_what_its_modules_have() -> None:
    rows = toolkit_table()
    assert len(rows) == 9 and all(rows.values()), rows
    for module, names in rows.items():
        imported = importlib.import_module(module)
        assert names <= set(dir(imported)), f'{module} lacks {names - set(dir(imported))}'


def test_the_checks_find_what_a_page_gets_wrong() -> None:
    text = 'Use ``from llnode.trainer import Nope`` or ``llnode.detector.postprocess.missing``::\n'
    assert page_names(text) == {'llnode.trainer', 'llnode.trainer.Nope', 'llnode.detector.postprocess.missing'}
    for name in ('llnode.trainer.Nope', 'llnode.detector.postprocess.missing'):
        with pytest.raises((ImportError, AttributeError)):
            resolve(name)
    assert resolve('llnode.trainer.batch_size.find_batch_size').__name__ == 'find_batch_size'
    assert page_names('pip install git+https://example.com/llnode.git') == set()
    assert python_blocks('.. code-block:: python\n\n    def broken(:\n') == [(1, 'def broken(:')]


def test_the_quickstart_names_the_demos_real_options() -> None:
    """Every ``llnode demo --option`` the quickstart names is one ``llnode demo --help`` lists."""
    from llnode.demo.command import demo_parser

    text = (DOCS / 'quickstart.rst').read_text()
    named = set(re.findall(r'(?<![\w-])--[a-z][a-z-]*', text.split("The demo's model")[0]))
    options = {option for action in demo_parser()._actions for option in action.option_strings}
    loop_only = {'--user'}  # ``llnode loop --data DIR/loop --user demo:demo``
    assert '--serve-ui' in named
    assert named - loop_only <= options, named - loop_only - options


def test_every_metric_the_observability_page_lists_is_one_llnode_exports() -> None:
    """Each ``llnode_*`` family of the page's tables is named in llnode's code (prometheus-client adds ``_total``
    to counters and ``_info`` to info families), and the page gives each counter its ``_total`` name.

    A static check: the metrics tests of tests/node and tests/detector scrape the families themselves."""
    source = '\n'.join(path.read_text() for path in (REPO / 'llnode').rglob('*.py'))
    in_code = set(re.findall(r"['\"](llnode_[a-z_]+)['\"]", source))
    text = (DOCS / 'observability.rst').read_text()
    rows = re.findall(r'^``(llnode_[a-z_]+)``\s+(counter|gauge|histogram|info|state set)\b', text, re.MULTILINE)
    assert len(rows) >= 35, rows
    for name, kind in rows:
        suffix = {'counter': '_total', 'info': '_info'}.get(kind, '')
        assert name.endswith(suffix), f'{name}: a {kind} is exposed as ..{suffix}'
        assert name.removesuffix(suffix) in in_code if suffix else name in in_code, name
    prose = re.findall(r'``(llnode_[a-z_]+)`` \((counter|gauge)', text)
    assert prose, 'the annotator and converter families'
    for name, kind in prose:
        assert (name.removesuffix('_total') if kind == 'counter' else name) in in_code, name


def test_the_restart_names_are_where_the_observability_page_says() -> None:
    """``NodeNeedsRestartError`` from each package the page lists, and the exit codes of its table."""
    from llnode.node import EXIT_FORCED, EXIT_NEEDS_RESTART, EXIT_OK, NodeNeedsRestartError

    text = (DOCS / 'observability.rst').read_text()
    places = re.search(r'importable from (.*?)\) from', text, re.DOTALL)
    assert places is not None
    modules = INLINE.findall(places.group(1))
    assert len(modules) == 6, modules
    for module in modules:
        assert importlib.import_module(module).NodeNeedsRestartError is NodeNeedsRestartError, module
    codes = dict(re.findall(r'^(\d+)\s+``(EXIT_\w+)``', text, re.MULTILINE))
    assert codes == {'0': 'EXIT_OK', '1': 'EXIT_FORCED', '75': 'EXIT_NEEDS_RESTART'}
    assert (EXIT_OK, EXIT_FORCED, EXIT_NEEDS_RESTART) == (0, 1, 75)


def test_the_migration_pages_reference_names_resolve_as_it_says() -> None:
    """The reference names the migration table promises under ``llnode.data_classes`` and ``llnode.enums``."""
    import llnode.data_classes
    import llnode.enums
    from llnode.detector import DetectorFactory, DetectorLogicFactory

    text = (DOCS / 'migration.rst').read_text()
    classes = re.search(r'``learning_loop_node.data_classes`` \((.*?)\)', text)
    enums = re.search(r'``learning_loop_node.enums`` \((.*?)\)', text)
    assert classes is not None and enums is not None
    assert len(INLINE.findall(classes.group(1))) == 10
    for name in INLINE.findall(classes.group(1)):
        assert hasattr(llnode.data_classes, name), name
    assert not hasattr(llnode.data_classes, 'Training')  # "Training is not there"
    for name in INLINE.findall(enums.group(1)):
        assert hasattr(llnode.enums, name), name
    assert llnode.enums.CategoryType.Box is llnode.enums.CategoryType.BOX
    assert llnode.enums.TrainerState.TrainingRunning is llnode.enums.TrainerState.RUNNING
    assert llnode.enums.AnnotationEventType.LeftMouseDown is llnode.enums.AnnotationEventType.LEFT_MOUSE_DOWN
    assert DetectorLogicFactory is DetectorFactory
