"""Sphinx configuration of llnode's documentation (``sphinx-build -W -b html docs docs/_build/html``)."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / '_ext'))
sys.path.insert(0, str(DOCS.parent))

import llnode  # noqa: E402  (the path above makes a clone's llnode importable without an install)

project = 'llnode'
author = 'the llnode authors'
copyright = 'the llnode authors'
release = llnode.__version__
version = release

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'llnode_environment',
]

html_theme = 'furo'
html_title = f'llnode {release}'
exclude_patterns = ['_build', 'examples']
templates_path: list[str] = []

# The API reference lists members where api.rst asks for them (``:members:``); those without a docstring are left out.
autodoc_default_options = {'show-inheritance': True}
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
# torch is optional: the torch parts of the API are documented without it installed.
autodoc_mock_imports = ['torch']
