"""``GET /docs``: the node's OpenAPI document as one self-contained HTML page.

Why our own page: detectors run on robots and in plants without internet access, so the page may load nothing
from elsewhere (the usual renderers come from a CDN). The document is embedded in the page and a short script
renders it: the routes by tag with their parameters, bodies and answers, the Socket.IO events, and the schemas.
"""

from __future__ import annotations

import html
import json
from typing import Any

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 70rem; padding: 1rem 2rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; margin-top: 2rem; }
code, pre { font: 13px/1.4 ui-monospace, monospace; background: #f5f5f5; border-radius: 3px; }
code { padding: 0 .2em; } pre { padding: .5rem; overflow-x: auto; }
details.op { border: 1px solid #ddd; border-radius: 4px; margin: .4rem 0; }
details.op > summary { cursor: pointer; padding: .4rem .6rem; list-style: none; }
details.op[open] > summary { border-bottom: 1px solid #ddd; }
details.op > div { padding: .2rem .8rem .6rem; }
.method { display: inline-block; min-width: 4rem; font-weight: 600; text-transform: uppercase; }
.get { color: #1565c0; } .post { color: #2e7d32; } .put { color: #ef6c00; } .delete { color: #c62828; }
.path { font-family: ui-monospace, monospace; font-weight: 600; margin-right: .8rem; }
.muted { color: #666; }
table { border-collapse: collapse; margin: .3rem 0 .6rem; } td, th { border: 1px solid #ddd; padding: .2rem .5rem;
  text-align: left; vertical-align: top; }
th { background: #fafafa; }
</style>
</head>
<body>
<noscript>This page renders the node's OpenAPI document with a script; the document itself is at
<a href="openapi.json">openapi.json</a>.</noscript>
<main id="api"></main>
<script id="openapi" type="application/json">__DOCUMENT__</script>
<script>
(function () {
  'use strict';
  const doc = JSON.parse(document.getElementById('openapi').textContent);
  const main = document.getElementById('api');

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function inline(text) {  // `code` spans of Markdown; everything else stays text
    const span = el('span');
    String(text).split('`').forEach((part, i) => span.append(i % 2 ? el('code', {}, part) : part));
    return span;
  }

  function markdown(text) {  // paragraphs, ## headings and | tables |: what the descriptions use
    const out = el('div');
    const blocks = String(text || '').split(/\\n\\s*\\n/);
    for (const block of blocks) {
      const lines = block.split('\\n').filter((line) => line.trim());
      if (!lines.length) continue;
      if (lines[0].startsWith('## ')) { out.append(el('h2', {}, lines.shift().slice(3))); }
      if (!lines.length) continue;
      if (lines[0].trim().startsWith('|')) {
        const rows = lines.filter((line) => !/^\\|[-| ]+\\|$/.test(line.trim()));
        const cells = (line) => line.trim().replace(/^\\||\\|$/g, '').split('|').map((c) => c.trim());
        const table = el('table');
        rows.forEach((row, i) => table.append(el('tr', {}, cells(row).map((c) => el(i ? 'td' : 'th', {}, inline(c))))));
        out.append(table);
      } else {
        out.append(el('p', {}, inline(lines.join(' '))));
      }
    }
    return out;
  }

  function typeOf(schema) {  // a short, readable type expression
    if (schema === true || schema === undefined) return 'any';
    if (schema === false) return 'nothing';
    if (schema.$ref) {
      const name = schema.$ref.split('/').pop();
      return el('a', {href: '#schema-' + name}, name);
    }
    const parts = [];
    if ('const' in schema) parts.push(JSON.stringify(schema.const));
    if (schema.enum) parts.push(schema.enum.map((v) => JSON.stringify(v)).join(' | '));
    for (const key of ['anyOf', 'oneOf']) {
      if (schema[key]) schema[key].forEach((option, i) => parts.push(i ? ' | ' : '', typeOf(option)));
    }
    if (schema.prefixItems) parts.push('[', schema.prefixItems.map((s) => JSON.stringify(s.const)).join(', '), ']');
    else if (schema.type === 'array') parts.push('array of ', typeOf(schema.items));
    else if (schema.type && !schema.enum && !('const' in schema)) {
      parts.push([].concat(schema.type).join(' | '));
      if (schema.contentMediaType) parts.push(' (binary)');
    }
    return el('span', {}, parts.length ? parts : 'any');
  }

  function schemaBlock(schema) {
    const block = el('div', {}, typeOf(schema));
    if (schema && schema.description && !schema.$ref) block.append(el('span', {class: 'muted'}, ' - ', schema.description));
    if (schema && schema.type === 'object' && schema.properties) block.append(properties(schema));
    return block;
  }

  function properties(schema) {
    const required = new Set(schema.required || []);
    const table = el('table', {}, el('tr', {}, el('th', {}, 'field'), el('th', {}, 'type'), el('th', {}, 'required')));
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      table.append(el('tr', {}, el('td', {}, el('code', {}, name)), el('td', {}, schemaBlock(prop)),
        el('td', {}, required.has(name) ? 'yes' : '')));
    }
    return table;
  }

  function content(body) {
    const list = el('div');
    for (const [type, media] of Object.entries(body.content || {})) {
      list.append(el('div', {}, el('code', {}, type), ' ', schemaBlock(media.schema || {})));
    }
    return list;
  }

  function operation(path, method, op) {
    const body = el('div');
    if (op.description) body.append(markdown(op.description));
    if (op.parameters && op.parameters.length) {
      const table = el('table', {}, el('tr', {}, ['name', 'in', 'type', 'description'].map((h) => el('th', {}, h))));
      for (const p of op.parameters) {
        table.append(el('tr', {}, el('td', {}, el('code', {}, p.name)), el('td', {}, p.in),
          el('td', {}, typeOf(p.schema || {})), el('td', {}, p.description || '')));
      }
      body.append(el('h4', {}, 'Options'), table);
    }
    if (op.requestBody) {
      body.append(el('h4', {}, 'Body'), op.requestBody.description ? el('p', {}, op.requestBody.description) : null,
        content(op.requestBody));
    }
    const answers = el('table', {}, el('tr', {}, ['status', 'meaning', 'body'].map((h) => el('th', {}, h))));
    for (const [status, answer] of Object.entries(op.responses || {})) {
      answers.append(el('tr', {}, el('td', {}, status), el('td', {}, answer.description || ''),
        el('td', {}, content(answer))));
    }
    body.append(el('h4', {}, 'Answers'), answers);
    return el('details', {class: 'op', id: op.operationId},
      el('summary', {}, el('span', {class: 'method ' + method}, method), el('span', {class: 'path'}, path),
        el('span', {class: 'muted'}, op.summary || '')),
      body);
  }

  main.append(el('h1', {}, doc.info.title), el('p', {class: 'muted'}, 'version ' + doc.info.version +
    ' - OpenAPI ' + doc.openapi + ' - ', el('a', {href: 'openapi.json'}, 'openapi.json')));
  main.append(markdown(doc.info.description));
  const tags = (doc.tags || []).map((t) => t.name);
  for (const tag of tags) {
    const section = el('section', {id: 'tag-' + tag}, el('h2', {}, tag));
    const about = (doc.tags.find((t) => t.name === tag) || {}).description;
    if (about) section.append(el('p', {}, about));
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        if ((op.tags || [])[0] === tag) section.append(operation(path, method, op));
      }
    }
    main.append(section);
  }
  const sio = doc['x-socketio'];
  if (sio) {
    const section = el('section', {id: 'socketio'}, el('h2', {}, 'Socket.IO events'),
      el('p', {}, inline('Path `' + sio.path + '`; each event is emitted with an ack, which carries the answer.')));
    for (const [event, spec] of Object.entries(sio.events)) {
      section.append(el('details', {class: 'op', id: 'event-' + event},
        el('summary', {}, el('span', {class: 'method'}, 'emit'), el('span', {class: 'path'}, event),
          el('span', {class: 'muted'}, spec.summary)),
        el('div', {}, el('h4', {}, 'Argument'), spec.argument ? schemaBlock(spec.argument) : el('p', {}, '(none)'),
          el('h4', {}, 'Answer'), schemaBlock(spec.answer))));
    }
    main.append(section);
  }
  const schemas = el('section', {id: 'schemas'}, el('h2', {}, 'Schemas'));
  for (const [name, schema] of Object.entries((doc.components || {}).schemas || {})) {
    schemas.append(el('div', {id: 'schema-' + name}, el('h3', {}, name), schemaBlock(schema)));
  }
  main.append(schemas);
  document.body.setAttribute('data-rendered', 'yes');
})();
</script>
</body>
</html>
"""


def docs_page(document: dict[str, Any]) -> str:
    """The page for ``document``: it is embedded (``<`` escaped, so no text in it can end the script)."""
    embedded = json.dumps(document).replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
    title = html.escape(str(document.get('info', {}).get('title', 'API')))
    return _PAGE.replace('__TITLE__', title).replace('__DOCUMENT__', embedded)
