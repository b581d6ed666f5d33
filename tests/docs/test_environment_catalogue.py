"""The configuration page is generated from ``llnode.config.ENVIRONMENT``; these tests keep that catalogue complete:
every variable the code reads is in it, and nothing in it is stale."""

from __future__ import annotations

import re
from pathlib import Path

from llnode.config import ALIASES, ENVIRONMENT, PLAIN, TOPICS, Settings, setting_default

PACKAGE = Path(__file__).resolve().parents[2] / 'llnode'

#: reads of the process environment with a literal name: os.environ.get('X'), os.environ['X'], os.getenv('X'),
#: os.environ.setdefault('X', ...), 'X' in os.environ, (os.environ if ... else env).get('X'), and env.get('X') on a
#: mapping named ``env`` (llnode's way to pass "the environment or a test's dict"). A WSGI ``environ`` is no match.
NAME = r"""['"]([A-Z][A-Z0-9_]*)['"]"""
READS = (
    re.compile(rf"""\bos\.environ\s*(?:\.get|\.setdefault|\.pop|\[)\s*\(?\s*{NAME}"""),
    re.compile(rf"""\bos\.environ\b[^\n]*?\)\s*\.get\s*\(\s*{NAME}"""),
    re.compile(rf"""\benv\s*(?:\.get|\[)\s*\(?\s*{NAME}"""),
    re.compile(rf"""\bgetenv\s*\(\s*{NAME}"""),
    re.compile(rf"""{NAME}\s+(?:not\s+)?in\s+os\.environ\b"""),
)


def variables_read_in_code() -> dict[str, set[str]]:
    """Variable name -> the files under llnode/ that read it by a literal name."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob('*.py'):
        text = path.read_text()
        for pattern in READS:
            for match in pattern.finditer(text):
                found.setdefault(match.group(1), set()).add(str(path.relative_to(PACKAGE.parent)))
    return found


def catalogued() -> set[str]:
    names = {v.name for v in ENVIRONMENT}
    return names | {v.alias for v in ENVIRONMENT if v.alias}


def test_the_scan_finds_the_reads_it_is_meant_to_find() -> None:
    read = variables_read_in_code()
    for known in ('LLNODE_ALLOCATOR', 'RANK', 'REQUESTS_CA_BUNDLE', 'LLNODE_LOOP_URL'):
        assert known in read, known
    assert 'REQUEST_METHOD' not in read  # a WSGI environ is not the process environment
    for line in ("os.environ.get('A_B')", "os.getenv('A_B')", "os.environ['A_B']", "'A_B' in os.environ"):
        assert any((hit := p.search(line)) and hit.group(1) == 'A_B' for p in READS), line


def test_every_variable_the_code_reads_is_catalogued() -> None:
    missing = {name: sorted(files) for name, files in variables_read_in_code().items() if name not in catalogued()}
    assert not missing, (
        f'environment variables read in llnode/ but missing from llnode.config.ENVIRONMENT: {missing}; '
        'add an EnvironmentVariable with its meaning (the docs configuration page is generated from it)'
    )


def test_every_setting_variable_is_catalogued_once_with_its_field() -> None:
    by_setting = {v.setting: v for v in ENVIRONMENT if v.setting}
    assert len(by_setting) == len([v for v in ENVIRONMENT if v.setting])
    assert set(by_setting) == set(PLAIN) | set(ALIASES)
    for field, variable in by_setting.items():
        primary, alias = ALIASES.get(field, (PLAIN.get(field), None))
        assert (variable.name, variable.alias) == (primary, alias)
    fields = {f for f in Settings.__dataclass_fields__ if f != 'sources'}
    assert fields == set(by_setting), 'a Settings field without an environment variable needs a catalogue entry'


def test_nothing_catalogued_is_stale() -> None:
    read = variables_read_in_code()
    settings_variables = set(PLAIN.values()) | {name for pair in ALIASES.values() for name in pair}
    stale = [v.name for v in ENVIRONMENT if v.name not in read and v.name not in settings_variables]
    assert not stale, f'catalogued but never read in llnode/: {stale}'


def test_entries_are_complete() -> None:
    assert len({v.name for v in ENVIRONMENT}) == len(ENVIRONMENT)
    for v in ENVIRONMENT:
        assert v.topic in TOPICS, v
        assert v.help.strip().endswith('.'), v
        assert setting_default(v)
    assert setting_default(next(v for v in ENVIRONMENT if v.name == 'DATA_FOLDER')) == '/data'
    assert setting_default(next(v for v in ENVIRONMENT if v.name == 'SYNC_CYCLES')) == '6'
    assert setting_default(next(v for v in ENVIRONMENT if v.name == 'NODE_VERSION')) == 'unset'
