"""Sphinx directive ``.. llnode-environment::``: the table of every environment variable, from the catalogue in
:mod:`llnode.config` (``ENVIRONMENT``), so the configuration page cannot drift from the code."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from llnode.config import ENVIRONMENT, TOPICS, setting_default


def environment_rst() -> list[str]:
    """The catalogue as reStructuredText: one section-less list-table per topic, each under a rubric."""
    lines: list[str] = []
    for topic, title in TOPICS.items():
        variables = [v for v in ENVIRONMENT if v.topic == topic]
        if not variables:
            continue
        lines += [f'.. rubric:: {title}', '', '.. list-table::', '   :header-rows: 1', '   :widths: 30 15 55', '']
        lines += ['   * - Variable', '     - Default', '     - Meaning']
        for v in variables:
            name = f'``{v.name}``' + (f' (alias ``{v.alias}``)' if v.alias else '')
            where = f'``Settings.{v.setting}``' if v.setting else f'read by ``{v.read_by}``'
            lines += [f'   * - {name}', f'     - ``{setting_default(v)}``', f'     - {v.help} ({where})']
        lines.append('')
    return lines


class EnvironmentTable(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(environment_rst(), source='llnode.config.ENVIRONMENT'), 0, container)
        return list(container.children)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive('llnode-environment', EnvironmentTable)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
