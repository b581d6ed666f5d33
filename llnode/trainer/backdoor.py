"""The trainer's test routes (loop-protocol §5), mounted with ``USE_BACKDOOR_CONTROLS`` or the constructor flag.

The Loop's own test suite drives a mock trainer through them. Routes that need the mock's subprocess use duck
typing on the logic: ``process_running()`` and ``kill_process()`` (``/kill_training_process``, ``/steps``),
``get_new_best(run)`` (``/steps``), the attributes ``provide_new_model`` and ``error_configuration``. Each route
answers JSON ``null`` like the reference; a logic without the needed member gets a 422 naming it (the reference
fails an assertion with a bare 500).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from llnode.node.app import json_response
from llnode.node.errors import BadRequest, NodeHTTPError, Unprocessable
from llnode.node.openapi import ApiDescription, json_answer, text_body
from llnode.schema import TrainerState
from llnode.trainer.logic import BestState

if TYPE_CHECKING:
    from llnode.trainer.node import TrainerNode

logger = logging.getLogger('llnode.trainer.backdoor')

ERROR_CONFIGURATION_KEYS = ('begin_training', 'crash_training', 'get_new_model', 'save_model')


class Conflict(NodeHTTPError):
    """The trainer is not in a state where the route can act (409, as the reference)."""

    status = 409


def backdoor_blueprint(node: TrainerNode) -> Blueprint:
    blueprint = Blueprint('llnode_trainer_backdoor', __name__)
    logic: Any = node.logic

    def process_running() -> bool:
        if hasattr(logic, 'process_running'):
            return bool(logic.process_running())
        snapshot = node.machine.snapshot()
        return snapshot.state == TrainerState.RUNNING.value

    @blueprint.put('/provide_new_model')
    def provide_new_model() -> Response:
        state = _raw_body()
        if state not in ('on', 'off'):
            raise BadRequest('Invalid state: expected on or off')
        if not hasattr(logic, 'provide_new_model'):
            raise Unprocessable(f'{type(logic).__name__} has no provide_new_model switch')
        logic.provide_new_model = state == 'on'
        if state == 'off':
            node.machine.clear_errors()
        return json_response(None)

    @blueprint.post('/reset')
    def reset() -> Response:
        node.reset()
        return json_response(None)

    @blueprint.put('/error_configuration')
    def error_configuration() -> Response:
        try:
            body = json.loads(request.get_data(cache=False) or b'null')
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f'the body is not JSON: {e}') from None
        if not isinstance(body, dict):
            raise BadRequest('expected a JSON object of error flags')
        unknown = sorted(set(body) - set(ERROR_CONFIGURATION_KEYS))
        if unknown or not all(isinstance(v, bool) for v in body.values()):
            raise Unprocessable(f'error flags are booleans named {", ".join(ERROR_CONFIGURATION_KEYS)}; got {body!r}')
        if not hasattr(logic, 'error_configuration'):
            raise Unprocessable(f'{type(logic).__name__} has no error_configuration')
        current = logic.error_configuration
        if isinstance(current, dict):
            logic.error_configuration = {**{k: False for k in ERROR_CONFIGURATION_KEYS}, **body}
        else:  # an object with one attribute per flag
            for key in ERROR_CONFIGURATION_KEYS:
                setattr(current, key, bool(body.get(key, False)))
        logger.info('error configuration: %s', body)
        return json_response(None)

    @blueprint.post('/steps')
    def steps() -> Response:
        raw = _raw_body()
        try:
            count = int(raw)
        except ValueError:
            raise BadRequest(f'expected an integer number of steps, got {raw!r}') from None
        if count < 0:
            raise BadRequest('the number of steps must not be negative')
        run = node.machine.run
        training = node.machine.training
        if run is None or training is None or not process_running():
            raise Conflict('trainer is not running')
        if not hasattr(logic, 'get_new_best'):
            raise Unprocessable(f'{type(logic).__name__} has no get_new_best(run)')
        switch = hasattr(logic, 'provide_new_model')
        previous = logic.provide_new_model if switch else None
        if switch:
            logic.provide_new_model = True
        try:
            for _ in range(count):
                state = logic.get_new_best(run)
                if isinstance(state, BestState) and node.publish_metrics(training, state):
                    logic.on_metrics_published(run, state)
        finally:
            if switch:
                logic.provide_new_model = previous
        node.send_status()
        return json_response(None)

    @blueprint.post('/kill_training_process')
    def kill_training_process() -> Response:
        if not hasattr(logic, 'kill_process'):
            raise Unprocessable(f'{type(logic).__name__} has no training process to kill')
        if not process_running():
            raise Conflict('trainer is not running')
        logic.kill_process()
        return json_response(None)

    @blueprint.post('/force_status_update')
    def force_status_update() -> Response:
        node.send_status()
        return json_response(None)

    return blueprint


def _raw_body() -> str:
    try:
        return request.get_data(cache=False).decode('utf-8').strip()
    except UnicodeDecodeError:
        return ''


def describe_backdoor(api: ApiDescription) -> None:
    """The test routes in the node's OpenAPI document (:mod:`llnode.node.openapi`)."""
    api.tag('backdoor', 'Test routes of the trainer, mounted with USE_BACKDOOR_CONTROLS (loop-protocol §5)')
    done = {200: json_answer('Done (the reference answers null)', {'type': 'null'})}
    api.add(
        'PUT',
        '/provide_new_model',
        tag='backdoor',
        summary="Switch the mock logic's new models on or off (off also clears the errors)",
        request_body=text_body('on or off', ['on', 'off']),
        responses=done,
        errors=[400, 422],
    )
    api.add(
        'POST',
        '/reset',
        tag='backdoor',
        summary='Abort any training, forget the checkpoint and errors, reconnect, send the status',
        responses=done,
        errors=[503],
    )
    api.add(
        'PUT',
        '/error_configuration',
        tag='backdoor',
        summary="Make the mock logic's hooks fail",
        request_body={
            'required': True,
            'content': {
                'application/json': {
                    'schema': {
                        'type': 'object',
                        'properties': {key: {'type': 'boolean'} for key in ERROR_CONFIGURATION_KEYS},
                        'additionalProperties': False,
                    }
                }
            },
        },
        responses=done,
        errors=[400, 422],
    )
    api.add(
        'POST',
        '/steps',
        tag='backdoor',
        summary='Let the running mock training report this many new best states',
        request_body=text_body('A number of steps', example='3'),
        responses=done,
        errors=[400, 409, 422],
    )
    api.add(
        'POST',
        '/kill_training_process',
        tag='backdoor',
        summary="Kill the mock logic's training process",
        responses=done,
        errors=[409, 422],
    )
    api.add('POST', '/force_status_update', tag='backdoor', summary='Send the status to the Loop now', responses=done)
