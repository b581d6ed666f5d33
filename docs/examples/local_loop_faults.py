"""The local Loop's fault injection: the Loop answers the next request for the image list with 503, then heals."""

import tempfile

from llnode.localloop import LocalLoop
from llnode.loop.errors import LoopHTTPError
from llnode.loop.exchange import DataExchange
from llnode.loop.http import LoopClient

with tempfile.TemporaryDirectory() as folder, LocalLoop(f'{folder}/loop', demo=True, demo_images=10) as loop:
    loop.inject_fault('GET', r'/data$', 503, count=1, retry_after=1)  # port 0: the loop picked a free port

    with LoopClient(loop.settings()) as client:
        exchange = DataExchange(client)
        try:
            exchange.image_ids()
        except LoopHTTPError as error:
            print('first try:', error.status)
        print('second try:', len(exchange.image_ids('complete')), 'complete images')

    [rule] = loop.fault_rules()
    print('the rule answered', rule['hits'], 'request')
