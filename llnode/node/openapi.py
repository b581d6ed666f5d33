"""A node's API description: an OpenAPI 3.1 document (``GET /openapi.json``) and an offline page for it (``/docs``).

Why written down route by route instead of derived from the Flask app: the routes read their options from headers
*or* query parameters, take raw text and multipart bodies, and answer plain text, JSON and errors; none of that
can be seen from a view function. So each node type describes its routes next to them (``Node.api_description()``
and its overrides), and a test compares the document with Flask's ``url_map`` for every node type: a route that
is served but not described, or described but not served, fails it.

Payload schemas are derived from the wire dataclasses of :mod:`llnode.schema` (:meth:`ApiDescription.schema`),
so they cannot drift from what the node sends. Every error is ``{"detail": "..."}`` (schema ``Error``) with the
status the route documents; 500 ``{"detail": "internal error"}`` is possible everywhere. Socket.IO events are
described in the document's ``x-socketio`` extension and in its description.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from llnode.schema import Wire

if TYPE_CHECKING:
    from llnode.node.node import Node

OPENAPI_VERSION = '3.1.0'

#: what each error status means, where a route does not say more
ERROR_MEANINGS = {
    400: 'Bad request: a malformed value or an undecodable image',
    404: 'Not found',
    409: 'Conflict: the node is not in a state where this can be done',
    413: 'The request body is larger than the node accepts',
    415: 'The body has a content type this route cannot read',
    422: 'Well-formed, but a value cannot be used (an unknown mode, a wrong shape, a missing part)',
    500: "Internal error (details in the node's log)",
    503: 'Not available now (no model loaded, a model swap running, the queue full); retry after Retry-After',
    507: 'The node cannot store what it was given (disk full or failing)',
}

ERROR_SCHEMA = {
    'type': 'object',
    'required': ['detail'],
    'properties': {'detail': {'type': 'string', 'description': 'What went wrong, for a person to read'}},
}


class ApiDescription:
    """The routes, schemas and Socket.IO events of one node, built by ``Node.api_description()``.

    ``add(method, path, ...)`` describes one route; ``schema(SomeWireClass)`` gives a ``$ref`` to that payload's
    schema (adding it and what it refers to); ``socketio_event(...)`` describes one event clients may send.
    ``document()`` is the OpenAPI 3.1 document.
    """

    def __init__(self, title: str, version: str, description: str = '') -> None:
        self.title = title
        self.version = version
        self.description = description
        self.paths: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, Any] = {'Error': ERROR_SCHEMA}
        self.tags: dict[str, str] = {}
        self.socketio_events: dict[str, dict[str, Any]] = {}
        self.socketio_path = '/ws/socket.io'

    # ------------------------------------------------------------------ routes

    def add(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        description: str = '',
        parameters: Sequence[Mapping[str, Any]] = (),
        request_body: Mapping[str, Any] | None = None,
        responses: Mapping[int, Mapping[str, Any]],
        errors: Iterable[int] = (),
    ) -> None:
        """Describe ``method path``: its answers by status (see :func:`json_answer`, :func:`text_answer`) and the
        error statuses it may answer (``{"detail": ...}``; 500 is added to every route)."""
        operation: dict[str, Any] = {
            'operationId': f'{method.lower()}_{path.strip("/").replace("/", "_").replace(".", "_") or "root"}',
            'summary': summary,
            'tags': [tag],
        }
        if description:
            operation['description'] = description
        if parameters:
            operation['parameters'] = [dict(p) for p in parameters]
        if request_body is not None:
            operation['requestBody'] = dict(request_body)
        answers: dict[str, Any] = {str(status): dict(answer) for status, answer in responses.items()}
        for status in sorted({*errors, 500}):
            answers.setdefault(str(status), error_answer(status))
        operation['responses'] = answers
        methods = self.paths.setdefault(path, {})
        if method.lower() in methods:
            raise ValueError(f'{method} {path} is described twice')
        methods[method.lower()] = operation
        self.tags.setdefault(tag, '')

    def tag(self, name: str, description: str) -> None:
        self.tags[name] = description

    # ------------------------------------------------------------------ Socket.IO

    def socketio_event(
        self, event: str, *, summary: str, argument: Mapping[str, Any] | None, answer: Mapping[str, Any]
    ) -> None:
        """Describe a Socket.IO event a client emits with an ack: its one argument (None: none) and the answer."""
        self.socketio_events[event] = {
            'summary': summary,
            'argument': None if argument is None else dict(argument),
            'answer': dict(answer),
        }

    # ------------------------------------------------------------------ schemas

    def schema(self, cls: type[Wire]) -> dict[str, Any]:
        """A ``$ref`` to the JSON Schema of the wire dataclass ``cls`` (added to the components with the classes
        it refers to): every field, ``null`` where optional, as ``to_dict()`` writes it."""
        name = cls.__name__
        if name not in self.schemas:
            self.schemas[name] = {}  # a placeholder first: a class may refer to itself
            hints = typing.get_type_hints(cls)
            properties = {f.name: self._type_schema(hints[f.name]) for f in dataclasses.fields(cls)}
            required = [
                f.name
                for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
            schema: dict[str, Any] = {'type': 'object', 'properties': properties}
            if required:
                schema['required'] = required
            doc = (cls.__doc__ or '').strip().split('\n\n')[0]
            if doc and not doc.startswith(f'{name}('):
                schema['description'] = ' '.join(doc.split())
            self.schemas[name] = schema
        return {'$ref': f'#/components/schemas/{name}'}

    def _type_schema(self, tp: Any) -> dict[str, Any]:
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            options = [self._type_schema(arg) for arg in typing.get_args(tp)]
            return options[0] if len(options) == 1 else {'anyOf': options}
        if tp is type(None):
            return {'type': 'null'}
        if origin is list:
            (item,) = typing.get_args(tp) or (Any,)
            return {'type': 'array', 'items': self._type_schema(item)}
        if origin is dict or tp is dict:
            return {'type': 'object'}
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {'type': 'string', 'enum': [member.value for member in tp]}
        if isinstance(tp, type) and issubclass(tp, Wire):
            return self.schema(tp)
        simple = {str: 'string', bool: 'boolean', int: 'integer', float: 'number'}
        if tp in simple:
            return {'type': simple[tp]}
        return {}  # Any

    # ------------------------------------------------------------------ the document

    def document(self) -> dict[str, Any]:
        description = self.description
        if self.socketio_events:
            description = f'{description}\n\n{socketio_markdown(self.socketio_path, self.socketio_events)}'.strip()
        document: dict[str, Any] = {
            'openapi': OPENAPI_VERSION,
            'info': {'title': self.title, 'version': self.version, 'description': description},
            'tags': [
                {'name': name, 'description': text} if text else {'name': name} for name, text in self.tags.items()
            ],
            'paths': {path: self.paths[path] for path in sorted(self.paths)},
            'components': {'schemas': dict(sorted(self.schemas.items()))},
        }
        if self.socketio_events:
            document['x-socketio'] = {'path': self.socketio_path, 'events': self.socketio_events}
        return document


def socketio_markdown(path: str, events: Mapping[str, Mapping[str, Any]]) -> str:
    """The Socket.IO events as a Markdown section (for the document's description)."""
    lines = [
        '## Socket.IO',
        '',
        f'Clients connect with Socket.IO (engine.io 4) at `{path}` (long-polling, upgraded to WebSocket where the '
        'server carries it) and emit these events with an acknowledgement callback; the answer arrives as the '
        'ack, or `{"error": "..."}` when the event fails. Their schemas are in `x-socketio`.',
        '',
        '| event | argument | answer |',
        '|---|---|---|',
    ]
    for event, spec in events.items():
        argument = spec['argument']
        argument_text = '(none)' if argument is None else argument.get('description', _short(argument))
        lines.append(f'| `{event}` | {argument_text} | {spec["answer"].get("description", _short(spec["answer"]))} |')
    return '\n'.join(lines)


def _short(schema: Mapping[str, Any]) -> str:
    if '$ref' in schema:
        return str(schema['$ref']).rsplit('/', 1)[-1]
    return str(schema.get('type', 'any'))


# ---------------------------------------------------------------------- building blocks


def error_answer(status: int, description: str | None = None) -> dict[str, Any]:
    """An error answer: ``{"detail": ...}`` with ``status``."""
    answer: dict[str, Any] = {
        'description': description or ERROR_MEANINGS.get(status, 'Error'),
        'content': {'application/json': {'schema': {'$ref': '#/components/schemas/Error'}}},
    }
    if status == 503:
        answer['headers'] = {
            'Retry-After': {'description': 'Seconds after which a retry may succeed', 'schema': {'type': 'integer'}}
        }
    return answer


def json_answer(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {'description': description, 'content': {'application/json': {'schema': dict(schema)}}}


def text_answer(description: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {'description': description, 'content': {'text/plain': {'schema': dict(schema or {'type': 'string'})}}}


def text_body(description: str, values: Sequence[str] | None = None, example: str | None = None) -> dict[str, Any]:
    """A raw text body (a bare word such as ``on``; surrounding whitespace is ignored)."""
    schema: dict[str, Any] = {'type': 'string'}
    if values:
        schema['enum'] = list(values)
    if example is not None:
        schema['examples'] = [example]
    return {'required': True, 'description': description, 'content': {'text/plain': {'schema': schema}}}


def option(
    names: Sequence[str], description: str, schema: Mapping[str, Any] | None = None, *, headers: bool = True
) -> list[dict[str, Any]]:
    """An option a route reads from a header or a query parameter, under each of ``names`` (the first found wins,
    headers before query parameters)."""
    parameters = []
    for where in ('header', 'query') if headers else ('query',):
        for name in names:
            parameters.append(
                {
                    'name': name,
                    'in': where,
                    'required': False,
                    'description': description,
                    'schema': dict(schema or {'type': 'string'}),
                }
            )
    return parameters


# ---------------------------------------------------------------------- every node's routes


def describe_common_routes(api: ApiDescription, node: Node) -> None:
    """The routes every node serves (:func:`llnode.node.app.common_blueprint`)."""
    api.tag('node', 'What every llnode node serves: health, statistics, metrics, switches, this description')
    status = {'type': 'object', 'properties': {'status': {'type': 'string'}}, 'required': ['status']}
    api.add(
        'GET',
        '/healthz',
        tag='node',
        summary='Liveness: the process serves requests',
        responses={200: json_answer('Alive', {**status, 'examples': [{'status': 'ok'}]})},
    )
    api.add(
        'GET',
        '/readyz',
        tag='node',
        summary='Readiness: the node can do its job now',
        description='Running, linked to the Loop where it needs a Socket.IO link, and its own is_ready(); '
        'otherwise 503 naming the cause.',
        responses={200: json_answer('Ready', {**status, 'examples': [{'status': 'ready'}]})},
        errors=[503],
    )
    api.add(
        'GET',
        '/stats',
        tag='node',
        summary='How the node is doing, as JSON (Node.stats())',
        description='Sections of each node type; a section that fails reads {"error": "..."} and the rest answers.',
        responses={200: json_answer('The statistics', {'type': 'object'})},
    )
    api.add(
        'GET',
        '/metrics',
        tag='node',
        summary='Prometheus metrics (text format 0.0.4, or what Accept asks for)',
        responses={200: text_answer('Every metric in the Prometheus text format')},
    )
    api.add(
        'PUT',
        '/debug_logging',
        tag='node',
        summary='Switch the llnode loggers between DEBUG and INFO',
        request_body=text_body('on or off', ['on', 'off']),
        responses={200: json_answer('The new state', {'type': 'string', 'enum': ['on', 'off']})},
        errors=[400],
    )
    api.add(
        'PUT',
        '/socketio',
        tag='node',
        summary='off: disconnect from the Loop and mute the repeat cycle; on: resume',
        request_body=text_body('on or off', ['on', 'off']),
        responses={200: json_answer('The new state', {'type': 'string', 'enum': ['on', 'off']})},
        errors=[400],
    )
    api.add(
        'GET',
        '/openapi.json',
        tag='node',
        summary='This description (OpenAPI 3.1)',
        responses={200: json_answer('The OpenAPI document', {'type': 'object'})},
    )
    api.add(
        'GET',
        '/docs',
        tag='node',
        summary='This description as a page that needs no network',
        responses={200: {'description': 'An HTML page', 'content': {'text/html': {'schema': {'type': 'string'}}}}},
    )
