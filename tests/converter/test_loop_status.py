"""The local Loop's side of a converter's status: ``update_converter`` from a plain python-socketio client
(``nodeType: converter``) is stored and acked like the annotator's status; a malformed one is refused."""

from __future__ import annotations

from typing import Any

from llnode.localloop import LocalLoop
from tests.localloop.helpers import connect_node, login

OK = {'success': True, 'error_msg': None, 'payload': None}
STATUS = {
    'id': 'converter-1',
    'name': 'test converter',
    'state': 'idle',
    'uptime': 3,
    'errors': {'m1': 'given up after 3 failed attempts: ValueError: bad'},
    'capabilities': ['text->upper'],
}


def test_update_converter_is_stored_with_the_node_type_and_acked(make_local_loop: Any) -> None:
    loop: LocalLoop = make_local_loop(demo=True, demo_images=1, ping_interval=1.0)
    client = connect_node(loop, 'converter', cookie=login(loop).cookies['session'])
    try:
        assert client.call('update_converter', STATUS, timeout=10) == OK
        record = loop.store.node('converter-1')
        assert record is not None and record['status'] == STATUS
        assert (record['node_type'], record['organization'], record['project']) == ('converter', 'zauberzeug', 'demo')
        listed = [n for n in loop.nodes() if n['id'] == 'converter-1']
        assert [(n['node_type'], n['connected'], n['name']) for n in listed] == [('converter', True, 'test converter')]

        for bad, message in (({'name': 'no id'}, 'string "id"'), ('text', 'string "id"')):
            ack = client.call('update_converter', bad, timeout=10)
            assert ack['success'] is False and message in ack['error_msg']
        ack = client.call('update_converter', (STATUS, 'extra'), timeout=10)
        assert ack['success'] is False and 'expects 1 argument' in ack['error_msg']
    finally:
        client.disconnect()
