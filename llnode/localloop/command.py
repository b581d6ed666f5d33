"""``llnode loop`` (run a local Loop) and ``llnode control`` (drive its control API) on the command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from llnode.config import ConfigError, user_path, writable_folder
from llnode.startup import report

DEFAULT_PORT = 8080
DEFAULT_DATA = './llnode-loop-data'
DEFAULT_USER = ('u', 'p')
DEFAULT_HOST = '127.0.0.1'
DEFAULT_URL = f'http://{DEFAULT_HOST}:{DEFAULT_PORT}'
DEFAULT_ORGANIZATION = 'zauberzeug'  # the demo project's, which llnode loop prints as LOOP_ORGANIZATION
DEFAULT_PROJECT = 'demo'
IMAGE_STATES = ('inbox', 'annotate', 'review', 'complete', 'trash')
ONLY_TRAINER_HELP = 'trainer id or sid (default: the only trainer connected for the project)'
ACK_TIMEOUT_HELP = "seconds to wait for the node's answer (default: 20)"


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(':')
    if not sep or not name:
        raise argparse.ArgumentTypeError(f'expected NAME:PASSWORD, got {text!r}')
    return name, password


# ---------------------------------------------------------------------- llnode loop


def loop_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='llnode loop',
        description='Run a local Learning Loop: REST API under /api, Socket.IO at /ws/socket.io, control API under '
        '/control, a web UI at /. Serves until SIGINT/SIGTERM; everything is kept in the data folder.',
    )
    parser.add_argument('--host', default=DEFAULT_HOST, help='address to listen on (default: %(default)s)')
    parser.add_argument(
        '--port', type=int, default=DEFAULT_PORT, help='port to listen on, 0 for any free port (default: %(default)s)'
    )
    parser.add_argument(
        '--data',
        type=user_path,
        default=DEFAULT_DATA,
        help='data folder: SQLite database, images, models (default: %(default)s)',
    )
    parser.add_argument('--demo', action='store_true', help='seed the demo project zauberzeug/demo unless it exists')
    parser.add_argument(
        '--demo-images',
        type=int,
        default=120,
        metavar='N',
        help='complete images of the demo project (default: %(default)s)',
    )
    parser.add_argument('--seed', type=int, default=0, help='seed of the demo images (default: %(default)s)')
    parser.add_argument(
        '--user',
        type=_user,
        action='append',
        default=[],
        metavar='NAME:PASSWORD',
        help='create or update a user at start (repeatable; default: u:p when none is given)',
    )
    parser.add_argument(
        '--websocket',
        action='store_true',
        help="serve with werkzeug's threaded server, which carries WebSocket (default: waitress, long-polling only)",
    )
    parser.add_argument(
        '--delay-ms',
        type=int,
        default=0,
        metavar='N',
        help='delay every HTTP answer by N ms, like a remote Loop (default: %(default)s)',
    )
    parser.add_argument('--log-level', default='INFO', help='logging level (default: %(default)s)')
    return parser


def loop_main(argv: list[str]) -> int:
    """Run a local Loop until SIGINT or SIGTERM; 0 after a clean stop, 2 (one line on stderr) if it cannot start."""
    args = loop_parser().parse_args(argv)
    if args.delay_ms < 0 or args.demo_images < 0:
        print('llnode loop: --delay-ms and --demo-images must not be negative', file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from llnode.localloop import LocalLoop
    from llnode.localloop.generator import DEMO_ORGANIZATION, DEMO_PROJECT

    users = args.user or [DEFAULT_USER]
    try:
        writable_folder(args.data, '--data', 'choose another folder with --data, or fix its permissions')
    except ConfigError as e:
        return report(e, 'llnode loop')
    loop = LocalLoop(
        args.data,
        host=args.host,
        port=args.port,
        websocket=args.websocket,
        delay_ms=args.delay_ms,
        users=users,
        demo=args.demo,
        demo_images=args.demo_images,
        seed=args.seed,
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        logging.getLogger('llnode.localloop').info('received %s, stopping', signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            loop.start()
        except ConfigError as e:
            return report(e, 'llnode loop')
        name, password = users[0]
        print(f'llnode local loop at {loop.url} (data: {args.data})')
        print(f'web UI: {loop.ui_url} (log in as {name})')
        print(f'LOOP_HOST={loop.host_port}')
        print(f'LOOP_USERNAME={name}')
        print(f'LOOP_PASSWORD={password}')
        print(f'LOOP_ORGANIZATION={DEMO_ORGANIZATION}')
        print(f'LOOP_PROJECT={DEMO_PROJECT}', flush=True)
        while not stop.wait(1.0):
            pass
        loop.stop()
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------- llnode control


def control_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='llnode control',
        description="Drive a running local Loop's control API (prints JSON). The defaults are what `llnode loop` "
        'prints: its URL, and the user of the LOOP_USERNAME/LOOP_PASSWORD lines when those are exported.',
    )
    parser.add_argument(
        '--url',
        default=os.environ.get('LLNODE_LOOP_URL', DEFAULT_URL),
        help='URL of the local Loop (default: $LLNODE_LOOP_URL or %(default)s, where `llnode loop` listens)',
    )
    parser.add_argument(
        '--user',
        type=_user,
        default=None,
        metavar='NAME:PASSWORD',
        help='login: a user `llnode loop` created with --user (default: $LOOP_USERNAME:$LOOP_PASSWORD, as '
        '`llnode loop` prints them; without either, the command refuses to guess)',
    )
    parser.add_argument(
        '-o', '--organization', default=DEFAULT_ORGANIZATION, help='organization of the project (default: %(default)s)'
    )
    parser.add_argument('-p', '--project', default=DEFAULT_PROJECT, help='project id (default: %(default)s)')
    parser.add_argument('--timeout', type=float, default=30.0, help='HTTP timeout in seconds (default: %(default)s)')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    sub.add_parser('status', help='is the Loop up?')
    sub.add_parser('projects', help='list projects')
    p = sub.add_parser('create-project', help='create the project (-o/-p) with categories')
    p.add_argument(
        '--category',
        action='append',
        default=[],
        metavar='NAME[:TYPE[:COLOR]]',
        help='category to create (repeatable; TYPE box|point|segmentation|classification)',
    )
    p = sub.add_parser('delete-project', help='delete the project (-o/-p)')
    p.add_argument('--keep-images', action='store_true', help="keep the image files on disk (the Loop's option)")
    sub.add_parser('categories', help='list the categories of the project')
    p = sub.add_parser('add-category', help='add a category to the project')
    p.add_argument('name', help='name of the new category')
    p.add_argument(
        '--type',
        default='box',
        choices=('box', 'point', 'segmentation', 'classification'),
        help='kind of annotation (default: %(default)s)',
    )
    p.add_argument('--color', help='colour as #RRGGBB (default: one of a palette)')
    p.add_argument('--hotkey', help='key that picks the category in the UI')
    p.add_argument('--point-size', type=int, help='point categories: the size of a point in pixels')
    sub.add_parser('users', help='list users')
    p = sub.add_parser('add-user', help='create a user or change its password')
    p.add_argument('credentials', type=_user, metavar='NAME:PASSWORD', help='the user and its (new) password')
    p = sub.add_parser('images', help='list the images of the project')
    p.add_argument('--state', choices=IMAGE_STATES, help='only images in this state')
    p.add_argument('--ids', action='store_true', help='print only the ids')
    p = sub.add_parser('image', help='one image with its annotations and detections')
    p.add_argument('image_id', help='id of the image (llnode control images --ids)')
    p = sub.add_parser('set-image', help="change an image's state, set or annotations")
    p.add_argument('image_id', help='id of the image (llnode control images --ids)')
    p.add_argument('--state', choices=IMAGE_STATES, help='move the image to this state')
    p.add_argument('--set', dest='image_set', choices=('train', 'test'), help='put the image into this split')
    p.add_argument(
        '--annotations',
        metavar='JSON',
        help='object with box_annotations / point_annotations / segmentation_annotations / '
        'classification_annotation (replaces the kinds it names); @FILE reads a file',
    )
    sub.add_parser('models', help='list the models of the project')
    sub.add_parser('trainings', help='list trainings and training updates of the project')
    p = sub.add_parser('begin-training', help='start a training on a connected trainer')
    p.add_argument('--node', help=ONLY_TRAINER_HELP)
    p.add_argument('--model-variant', default='', help='model variant the trainer is asked for (default: none)')
    p.add_argument(
        '--hyperparameters', metavar='JSON', help="hyperparameters as a JSON object, or @FILE (default: the UI's)"
    )
    p.add_argument('--base-model', metavar='UUID', help='continue from this model (id)')
    p.add_argument('--base-version', metavar='VERSION', help='continue from this model version (e.g. 1.2)')
    p.add_argument('--category', action='append', metavar='NAME_OR_ID', help='train only these (repeatable)')
    p.add_argument('--ack-timeout', type=float, default=20.0, help=ACK_TIMEOUT_HELP)
    for command in ('stop-training', 'abort-training'):
        p = sub.add_parser(command, help=f'send {command.replace("-", "_")} to a trainer')
        p.add_argument('node', nargs='?', help=ONLY_TRAINER_HELP)
        p.add_argument('--node', dest='node_option', metavar='NODE', help='the same as NODE (as begin-training)')
        p.add_argument('--ack-timeout', type=float, help=ACK_TIMEOUT_HELP)
    p = sub.add_parser('restart', help='send restart to a connected node')
    p.add_argument('node', help='node id or sid (llnode control nodes)')
    p.add_argument('--ack-timeout', type=float, help="seconds to wait for the node's answer (default: 2)")
    p = sub.add_parser(
        'handle-user-input', help='forward a mouse or key event to a connected annotator node (prints its ack)'
    )
    p.add_argument('node', help='annotator node id or sid')
    p.add_argument(
        'user_input',
        metavar='JSON',
        help='a UserInput {"frontend_id": ..., "data": {coordinate, event_type, context, image_uuid, category, ...}}; '
        '@FILE reads a file',
    )
    p.add_argument('--ack-timeout', type=float, help='seconds to wait for the node (default 30)')
    p = sub.add_parser('user-logout', help='tell a connected annotator node that a frontend is gone')
    p.add_argument('node', help='annotator node id or sid')
    p.add_argument('frontend_id', help='the frontend_id its inputs carried')
    p.add_argument('--ack-timeout', type=float, help='seconds to wait for the node (default 30)')
    p = sub.add_parser('deploy', help="set or clear the project's deployment target")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument('--model-id', help='deploy the model with this id')
    group.add_argument('--version', help='deploy the model with this version (e.g. 1.2)')
    group.add_argument('--clear', action='store_true', help='deploy nothing')
    sub.add_parser('deployment', help="show the project's deployment target")
    sub.add_parser('nodes', help='list nodes with their last status and connection state')
    sub.add_parser('uploads', help='list outbox batches received for the project')
    return parser


def _user_from_env() -> tuple[str, str]:
    """The login of ``LOOP_USERNAME``/``LOOP_PASSWORD`` (what ``llnode loop`` prints), or a start-up error."""
    name, password = os.environ.get('LOOP_USERNAME', ''), os.environ.get('LOOP_PASSWORD')
    if not name or password is None:
        raise ConfigError(
            'no login given: pass --user NAME:PASSWORD with a user of the Loop (llnode loop prints it; '
            'without --user it creates u:p), or export LOOP_USERNAME and LOOP_PASSWORD'
        )
    return name, password


def _json_argument(text: str | None, what: str) -> Any:
    if text is None:
        return None
    if text.startswith('@'):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise ConfigError(f'cannot read {what} from {text[1:]}: {e.strerror or e}') from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f'{what} is not valid JSON: {e}') from None


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    """(method, path, json body) of a control command."""
    project = f'/control/projects/{args.organization}/{args.project}'
    c = args.command
    if c == 'status':
        return 'GET', '/api/status', None
    if c == 'projects':
        return 'GET', '/control/projects', None
    if c == 'create-project':
        categories = []
        for text in args.category:
            name, _, rest = text.partition(':')
            type_, _, color = rest.partition(':')
            categories.append({'name': name, 'type': type_ or 'box', 'color': color or None})
        return (
            'POST',
            '/control/projects',
            {'organization': args.organization, 'project': args.project, 'categories': categories},
        )
    if c == 'delete-project':
        return 'DELETE', f'{project}?keep_images={str(args.keep_images).lower()}', None
    if c == 'categories':
        return 'GET', f'{project}/categories', None
    if c == 'add-category':
        return (
            'POST',
            f'{project}/categories',
            {
                'name': args.name,
                'type': args.type,
                'color': args.color,
                'hotkey': args.hotkey,
                'point_size': args.point_size,
            },
        )
    if c == 'users':
        return 'GET', '/control/users', None
    if c == 'add-user':
        return 'POST', '/control/users', {'username': args.credentials[0], 'password': args.credentials[1]}
    if c == 'images':
        return 'GET', f'{project}/images' + (f'?state={args.state}' if args.state else ''), None
    if c == 'image':
        return 'GET', f'{project}/images/{args.image_id}', None
    if c == 'set-image':
        body = dict(_json_argument(args.annotations, '--annotations') or {})
        if args.state:
            body['state'] = args.state
        if args.image_set:
            body['set'] = args.image_set
        return 'PUT', f'{project}/images/{args.image_id}', body
    if c == 'models':
        return 'GET', f'{project}/models', None
    if c == 'trainings':
        return 'GET', f'{project}/trainings', None
    if c == 'begin-training':
        body = {
            'node': args.node,
            'model_variant': args.model_variant,
            'base_model_uuid': args.base_model,
            'base_model_version': args.base_version,
            'timeout': args.ack_timeout,
        }
        if args.hyperparameters is not None:
            body['hyperparameters'] = _json_argument(args.hyperparameters, '--hyperparameters')
        if args.category:
            body['categories'] = args.category
        return 'POST', f'{project}/trainings', body
    if c in ('stop-training', 'abort-training'):
        body = {'node': args.node or args.node_option}
        if args.ack_timeout is not None:
            body['timeout'] = args.ack_timeout
        return 'POST', f'{project}/trainer/{c.replace("-", "_")}', body
    if c == 'restart':
        body = {} if args.ack_timeout is None else {'timeout': args.ack_timeout}
        return 'POST', f'/control/nodes/{args.node}/restart', body
    if c == 'handle-user-input':
        user_input = _json_argument(args.user_input, 'the user input')
        if not isinstance(user_input, dict):
            raise ConfigError('the user input must be a JSON object {"frontend_id": ..., "data": {...}}')
        body = {**user_input} if args.ack_timeout is None else {**user_input, 'timeout': args.ack_timeout}
        return 'POST', f'/control/nodes/{args.node}/handle_user_input', body
    if c == 'user-logout':
        body = {'frontend_id': args.frontend_id}
        if args.ack_timeout is not None:
            body['timeout'] = args.ack_timeout
        return 'POST', f'/control/nodes/{args.node}/user_logout', body
    if c == 'deploy':
        if args.clear:
            return 'DELETE', f'{project}/deployment', None
        return 'PUT', f'{project}/deployment', {'model_id': args.model_id, 'version': args.version}
    if c == 'deployment':
        return 'GET', f'{project}/deployment', None
    if c == 'nodes':
        return 'GET', '/control/nodes', None
    if c == 'uploads':
        return 'GET', f'{project}/uploads', None
    raise SystemExit(f'llnode control: unknown command {c!r}')  # argparse prevents this


def control_main(argv: list[str]) -> int:
    """Run one control command; 0 on success, 1 on an error answer or no answer, 2 on bad usage (one line)."""
    import requests

    args = control_parser().parse_args(argv)
    try:
        user = args.user or _user_from_env()
        method, path, body = _request(args)
    except ConfigError as e:
        return report(e, 'llnode control')
    url = args.url.rstrip('/')
    try:
        with requests.Session() as session:
            login = session.post(
                f'{url}/api/login', data={'username': user[0], 'password': user[1]}, timeout=args.timeout
            )
            if login.status_code != 200:
                print(
                    f'llnode control: login as {user[0]!r} failed: {login.status_code} {login.text.strip()}',
                    file=sys.stderr,
                )
                return 1
            response = session.request(method, f'{url}{path}', json=body, timeout=args.timeout)
    except requests.RequestException as e:
        print(f'llnode control: no answer from {url}: {e}', file=sys.stderr)
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    if not response.ok:
        detail = answer.get('detail', answer) if isinstance(answer, dict) else answer
        print(f'llnode control: {method} {path} -> {response.status_code}: {detail}', file=sys.stderr)
        return 1
    if args.command == 'images' and args.ids:
        for item in answer['images']:
            print(item['id'])
    else:
        print(json.dumps(answer, indent=2))
    return 0
