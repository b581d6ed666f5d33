"""Starting a training the way the Loop's web UI does: build ``begin_training`` details and send them.

Shared by the control API (``POST /control/projects/{org}/{project}/trainings``) and
:meth:`llnode.localloop.LocalLoop.begin_training`.
"""

from __future__ import annotations

import threading
from typing import Any

from llnode.localloop.errors import BadRequest, NotFound
from llnode.localloop.sockets import NodeHub
from llnode.localloop.store import Store

DEFAULT_HYPERPARAMETERS = {'resolution': 320, 'fliplr': 0.5, 'flipud': 0.0}

#: serialises training starts so that two requests never hand out the same training number
_training_lock = threading.Lock()


def training_categories(store: Store, organization: str, project: str, wanted: Any) -> list[dict[str, Any]]:
    """All project categories, or those named (by name or id) in ``wanted``, in that order."""
    available = store.categories(organization, project)
    if wanted is None:
        return available
    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
        raise BadRequest('"categories" must be a list of category names or ids')
    chosen = []
    for w in wanted:
        match = next((c for c in available if w in (c['id'], c['name'])), None)
        if match is None:
            raise NotFound(f'category {w!r} not found in {organization}/{project}')
        chosen.append(match)
    return chosen


def begin_training(
    store: Store,
    hub: NodeHub,
    organization: str,
    project: str,
    *,
    node: str | None = None,
    model_variant: Any = '',
    hyperparameters: Any = None,
    base_model_uuid: Any = None,
    base_model_version: Any = None,
    categories: Any = None,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Send ``begin_training(organization, project, details)`` (loop-protocol §7.5.1) to a connected trainer.

    ``node`` is a trainer id or sid; without it, the only trainer connected for the project. The training number
    is the project's next one; an attempt the trainer refused uses up none. Returns ``{training_number, node, sid, details,
    ack, accepted}``; ``ack`` is the trainer's answer (None when it sent none within ``timeout``).
    """
    store.require_project(organization, project)
    if hyperparameters is None:
        hyperparameters = dict(DEFAULT_HYPERPARAMETERS)
    if not isinstance(hyperparameters, dict):
        raise BadRequest('"hyperparameters" must be an object')
    if not isinstance(model_variant, str):
        raise BadRequest('"model_variant" must be a string')
    if base_model_version:
        base_model_uuid = store.model_by_version(organization, project, str(base_model_version))['id']
    if base_model_uuid is not None and not isinstance(base_model_uuid, str):
        raise BadRequest('"base_model_uuid" must be a string or null')
    chosen = training_categories(store, organization, project, categories)
    sid = hub.resolve(node, node_type='trainer', organization=organization, project=project)
    with _training_lock:
        number = store.next_training_number(organization, project)
        details = {
            'categories': chosen,
            'training_number': number,
            'model_variant': model_variant,
            'hyperparameters': hyperparameters,
            'base_model_uuid': base_model_uuid,
        }
        ack = hub.send(sid, 'begin_training', organization, project, details, timeout=timeout)
        accepted = isinstance(ack, dict) and ack.get('success') is True
        node_id = next((n['id'] for n in hub.connected() if n['sid'] == sid), None)
        store.add_training(organization, project, number, node_id=node_id, details=details, ack=ack, accepted=accepted)
    return {
        'training_number': number,
        'node': node_id or sid,
        'sid': sid,
        'details': details,
        'ack': ack,
        'accepted': accepted,
    }
