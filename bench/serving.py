"""Serving: gunicorn against waitress and werkzeug, and against the reference on uvicorn; prints one JSON line.

Every detector is the mock detector (one box and one point per image) in its own process, following a local Loop
process (``llnode loop --demo``, model 1.1 in format ``mocked``), as in ``bench/detect.py`` whose pieces this reuses.

- ``socketio_websocket``: Socket.IO ``detect`` of a raw 640x480x3 frame over WebSocket, one client, on llnode's
  gunicorn and werkzeug and on the reference 0.27.0 served by uvicorn (its users' way) with a constant logic;
  target: gunicorn's p50 at most 0.75x the reference's. Measured with two clients, each in its own figures:
  python-socketio's threaded ``Client`` (websocket-client, which masks a frame in pure Python: about 1.3 ms of
  each call, the same for every server), and ``socketio_websocket_rosys_client``: the client a robot runs, rosys's
  ``socketio.AsyncClient`` over aiohttp (C masking, ``max_msg_size`` 64 MiB), in a process of the reference's
  virtualenv, which has it.
- ``rest``: ``POST /detect`` of a 640x480 JPEG, sequential p50/p99 and 8 clients' throughput, gunicorn against
  waitress, and the serving process's CPU time per request (gunicorn's worker), which other load on a shared
  machine sways less than time; target: gunicorn no worse.
- ``starvation`` per server: REST p50/p99 idle, then while 200 Socket.IO clients are connected and idle (polling
  first, then WebSocket where offered, as robots connect), while 50 uploads hang half-way, and right after 100
  clients vanished (their process stopped with SIGSTOP: no close, no FIN, as a robot that drives out of range);
  the serving process's threads before, during and after, and how long after the vanishing they took to come
  back (target: the node's engine.io ping timeout + 10 s). Target: p99 during at most 2x idle.
- ``starvation_raised_limits``: the same with the Socket.IO limits raised to ``--raised-sessions`` (220), so
  that all 200 clients are connected (the defaults, sized for a robot, refuse about half of them).
- ``idle_rss``: the mock detector 3 s after its last request: gunicorn's worker and master beside waitress, as RSS
  (pages the forked worker shares with its master counted in both) and as PSS (shared pages split between them,
  so the sum is what the two take together).

The reference runs from its own virtualenv (``--reference-venv``, default /tmp/llnode-bench-ref); create it with
``--make-reference-venv`` (``pip install learning-loop-node==0.27.0 uvicorn``). Without it the reference is skipped.

    python bench/serving.py [--quick] [--make-reference-venv] [--reference-venv PATH] [--skip-starvation]
                            [--raised-sessions N]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import requests
from detect import (  # bench/detect.py: benchmarks run as scripts from bench/
    MOCK_DETECTOR,
    ORGANIZATION,
    PASSWORD,
    PROJECT,
    ROOT,
    SOCKETIO_PATH,
    USER,
    Process,
    RestDetect,
    SocketDetect,
    camera_like_jpeg,
    decoded,
    free_port,
    latency_figures,
    local_loop,
    rss_mb,
    run_clients,
)
from machine import machine

from llnode.node.admission import ServingLimits

REFERENCE_VENV = Path('/tmp/llnode-bench-ref')
#: how the bench tells its mock detector to raise the Socket.IO limits (``--raised-sessions``)
SESSIONS_VARIABLE = 'LLNODE_BENCH_SESSIONS'
REFERENCE_PACKAGES = ('learning-loop-node==0.27.0', 'uvicorn')

TARGET_WEBSOCKET_RATIO = 0.75
TARGET_STARVED_P99_RATIO = 2.0
#: the node's engine.io heartbeat (llnode.node.admission.ServingLimits' defaults)
PING_INTERVAL_S, PING_TIMEOUT_S = ServingLimits.ping_interval_s, ServingLimits.ping_timeout_s
#: the issue's bound on the threads' return after clients vanished, past the ping timeout
THREADS_BACK_SLACK_S = 10.0

#: The reference's detector with a constant logic (format ``mocked``, as llnode's mock), served by uvicorn.
REFERENCE_APP = """
import sys
import uvicorn
from learning_loop_node.data_classes import BoxDetection, ImageMetadata, ImagesMetadata, PointDetection
from learning_loop_node.detector.detector_node import DetectorNode


class ConstantLogic:
    def __init__(self, model_info):
        self.model_info = model_info

    def evaluate(self, image):
        version = self.model_info.version
        return ImageMetadata(
            box_detections=[
                BoxDetection(
                    category_name='box_cat', x=1, y=2, width=3, height=4, model_name=version, confidence=0.42
                )
            ],
            point_detections=[
                PointDetection(category_name='point_cat', x=10.5, y=12.0, model_name=version, confidence=0.9)
            ],
        )

    def batch_evaluate(self, images):
        return ImagesMetadata(items=[self.evaluate(image) for image in images])


class ConstantFactory:
    model_format = 'mocked'

    async def build(self, model_info):
        return ConstantLogic(model_info)


node = DetectorNode('reference mock', ConstantFactory())
uvicorn.run(node, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')
"""


#: rosys's Socket.IO client (``socketio.AsyncClient`` over aiohttp, as rosys/vision/detector_hardware.py connects
#: it), run by the reference virtualenv's Python: ``ROSYS_CLIENT URLS_JSON FRAME_NPY CALLS WARM_UP``; ``detect``
#: calls to each URL in alternating blocks of 25, one JSON line of p50/p99/mean per URL. Its own process, so the
#: bench's llnode code stays free of asyncio.
ROSYS_CLIENT = """
import asyncio, json, sys, time
import numpy as np
import socketio

async def main(urls, frame, calls, warm_up):
    payload = {'image': {'bytes': frame.tobytes(), 'dtype': str(frame.dtype), 'shape': list(frame.shape)},
               'autoupload': 'disabled'}
    clients = {}
    for name, url in urls.items():
        client = socketio.AsyncClient(reconnection=False, websocket_extra_options={'max_msg_size': 64 * 2**20 + 1000})
        await client.connect(url.replace('http://', 'ws://'), socketio_path='/ws/socket.io', wait_timeout=3)
        for _ in range(100):
            if client.transport() == 'websocket':
                break
            await asyncio.sleep(0.05)
        if client.transport() != 'websocket':
            raise SystemExit(f'{name}: the rosys client stayed on {client.transport()}')
        clients[name] = client
    async def call(client):
        started = time.perf_counter()
        answer = await client.call('detect', payload, timeout=5)
        elapsed = time.perf_counter() - started
        if not isinstance(answer, dict) or len(answer.get('box_detections') or []) != 1:
            raise SystemExit(f'unexpected Socket.IO detect answer: {answer}')
        return elapsed
    for client in clients.values():
        for _ in range(warm_up):
            await call(client)
    times = {name: [] for name in clients}
    while any(len(done) < calls for done in times.values()):
        for name, client in clients.items():
            for _ in range(min(25, calls - len(times[name]))):
                times[name].append(await call(client))
    for client in clients.values():
        await client.disconnect()
    print(json.dumps(times))

asyncio.run(main(json.loads(sys.argv[1]), np.load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
"""


# ---------------------------------------------------------------------------------------------- processes


def detector_env(loop_host: str, data_folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        'LOOP_HOST': loop_host,
        'LOOP_USERNAME': USER,
        'LOOP_PASSWORD': PASSWORD,
        'LOOP_ORGANIZATION': ORGANIZATION,
        'LOOP_PROJECT': PROJECT,
        'DATA_FOLDER': str(data_folder),
    }


@contextlib.contextmanager
def llnode_detector(loop_host: str, server: str, folder: Path, sessions: int = 0) -> Iterator[tuple[str, Process]]:
    """The mock detector served by ``serve(server=...)`` in its own process, model loaded; ``sessions``: limits
    raised to that many Socket.IO sessions, long-polls and WebSockets, with that many threads plus the REST
    reserve (0: the defaults)."""
    port = free_port()
    args = [sys.executable, __file__, '--serve-mock', server, str(port)]
    env = {**detector_env(loop_host, folder / server), SESSIONS_VARIABLE: str(sessions)}
    process = Process.start(f'mock detector ({server})', args, folder / f'{server}.log', env)
    url = f'http://127.0.0.1:{port}'
    try:
        process.wait_until(f'{url}/readyz', 'readiness (model 1.1 loaded)')
        yield url, process
    finally:
        process.stop()


@contextlib.contextmanager
def reference_detector(venv: Path, loop_host: str, folder: Path) -> Iterator[tuple[str, Process]]:
    port = free_port()
    app = folder / 'reference_app.py'
    app.write_text(REFERENCE_APP)
    env = detector_env(loop_host, folder / 'reference')
    process = Process.start(
        'reference (uvicorn)', [str(venv / 'bin' / 'python'), str(app), str(port)], folder / 'reference.log', env
    )
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(requests.RequestException, ValueError):
                about = requests.get(f'{url}/about', timeout=2).json()
                if about.get('model_info'):
                    break
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'the reference detector did not load its model:\n{process.tail()}')
            time.sleep(0.2)
        yield url, process
    finally:
        process.stop()


def serving_pid(process: Process, server: str) -> int:
    """The process that runs the node: gunicorn's worker, else the process itself."""
    if server != 'gunicorn':
        return process.popen.pid
    pid = process.popen.pid
    children = Path(f'/proc/{pid}/task/{pid}/children').read_text().split()
    return int(children[0])


def thread_count(pid: int) -> int:
    return len(os.listdir(f'/proc/{pid}/task'))


# ---------------------------------------------------------------------------------------------- figures


def alternating(calls: dict[str, Callable[[], float]], *, warm_up: int, count: int, block: int = 25) -> dict[str, Any]:
    """``count`` timed calls of each, in alternating blocks of ``block``, so that the machine's load (other
    processes come and go on a shared machine) weighs on every contender alike; latency figures per name."""
    for call in calls.values():
        for _ in range(warm_up):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    while any(len(done) < count for done in times.values()):
        for name, call in calls.items():
            times[name].extend(call() for _ in range(min(block, count - len(times[name]))))
    return {name: {'calls': len(done), **latency_figures(done)} for name, done in times.items()}


def websocket_figures(urls: dict[str, str], frame: np.ndarray, *, warm_up: int, calls: int) -> dict[str, Any]:
    payload = {
        'image': {'bytes': frame.tobytes(), 'dtype': str(frame.dtype), 'shape': list(frame.shape)},
        'autoupload': 'disabled',
    }
    links = {name: SocketDetect(url, 'websocket') for name, url in urls.items()}
    try:
        return alternating(
            {name: functools.partial(link.call, payload) for name, link in links.items()}, warm_up=warm_up, count=calls
        )
    finally:
        for link in links.values():
            link.close()


def rosys_client_figures(
    venv: Path, urls: dict[str, str], frame: np.ndarray, *, warm_up: int, calls: int
) -> dict[str, Any]:
    """``detect`` latency with rosys's client (:data:`ROSYS_CLIENT`), the contenders in alternating blocks."""
    with tempfile.TemporaryDirectory(prefix='llnode-bench-rosys-') as tmp:
        path = Path(tmp) / 'frame.npy'
        np.save(path, frame)
        done = subprocess.run(
            [str(venv / 'bin' / 'python'), '-c', ROSYS_CLIENT, json.dumps(urls), str(path), str(calls), str(warm_up)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f'the rosys client failed ({done.returncode}):\n{done.stderr[-2000:]}')
    times: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: {'calls': len(seconds), **latency_figures(seconds)} for name, seconds in times.items()}


#: Sequential calls per server and turn while the serving processes' CPU time is read.
CPU_BLOCK = 50


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the live threads of process ``pid``, in nanoseconds from the scheduler
    (``/proc/PID/stat`` counts 10 ms ticks, 3 % of what 200 calls take). A thread that ends is left out; one that
    ends while measured was idle for the pool's idle time before, so nothing it did while measured is lost."""
    total = 0
    for task in os.listdir(f'/proc/{pid}/task'):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            total += int(Path(f'/proc/{pid}/task/{task}/schedstat').read_text().split()[0])
    return total / 1e9


def rest_figures(
    urls: dict[str, str], pids: dict[str, int], jpeg: bytes, *, calls: int, clients: int, rounds: int = 2
) -> dict[str, Any]:
    """Sequential latency in alternating blocks, then the serving processes' CPU per request (sequential, in
    alternating blocks, and with ``clients`` clients), then ``clients`` clients' throughput, servers taking turns;
    gunicorn's figures over waitress's last."""
    rest = {name: RestDetect(url, jpeg) for name, url in urls.items()}
    sessions = {name: requests.Session() for name in urls}
    cpu_used = dict.fromkeys(urls, 0.0)
    try:
        for name, session in sessions.items():
            rest[name].check(session)
        sequential = alternating(
            {name: functools.partial(rest[name].call, sessions[name]) for name in urls}, warm_up=10, count=calls
        )
        for _ in range(0, calls, CPU_BLOCK):
            for name in urls:
                before = cpu_seconds(pids[name])
                for _ in range(CPU_BLOCK):
                    rest[name].call(sessions[name])
                cpu_used[name] += cpu_seconds(pids[name]) - before
    finally:
        for session in sessions.values():
            session.close()
    measured = -(-calls // CPU_BLOCK) * CPU_BLOCK
    throughput: dict[str, list[float]] = {name: [] for name in urls}
    clients_cpu = dict.fromkeys(urls, 0.0)
    clients_calls = dict.fromkeys(urls, 0)
    for _ in range(rounds):
        for name in urls:
            before = cpu_seconds(pids[name])
            wall, times = run_clients(clients, calls // 4, rest[name].call, requests.Session)
            clients_cpu[name] += cpu_seconds(pids[name]) - before
            clients_calls[name] += len(times)
            throughput[name].append(round(len(times) / wall, 1))
    figures: dict[str, Any] = {
        name: {
            'sequential': {**sequential[name], 'cpu_ms_per_request': round(cpu_used[name] * 1000 / measured, 3)},
            f'{clients}_clients_requests_per_s': throughput[name],
            f'{clients}_clients_requests_per_s_mean': round(sum(throughput[name]) / rounds, 1),
            f'{clients}_clients_cpu_ms_per_request': round(clients_cpu[name] * 1000 / clients_calls[name], 3),
        }
        for name in urls
    }
    gunicorn, waitress = figures['gunicorn'], figures['waitress']
    figures['gunicorn_over_waitress'] = {
        f'sequential_{key}': round(gunicorn['sequential'][key] / waitress['sequential'][key], 3)
        for key in ('p50_ms', 'cpu_ms_per_request')
    } | {
        key: round(gunicorn[key] / waitress[key], 3)
        for key in (f'{clients}_clients_requests_per_s_mean', f'{clients}_clients_cpu_ms_per_request')
    }
    return figures


def rest_latency(url: str, jpeg: bytes, calls: int) -> dict[str, Any]:
    rest = RestDetect(url, jpeg)
    times, failures = [], 0
    with requests.Session() as session:
        for _ in range(calls):
            try:
                times.append(rest.call(session))
            except (SystemExit, requests.RequestException):
                failures += 1
    figures: dict[str, Any] = latency_figures(times) if times else {}
    return {**figures, 'failed': failures}


class Clients:
    """``count`` python-socketio clients in a child process (``--idle-clients``), connected and idle."""

    def __init__(self, url: str, count: int) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, __file__, '--idle-clients', url, str(count)], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise SystemExit('the idle clients did not report')
        self.report: dict[str, Any] = json.loads(line)

    def vanish(self) -> None:
        """Stop the process: its connections stay open and silent (no close, no FIN)."""
        os.kill(self.popen.pid, signal.SIGSTOP)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


def hung_posts(url: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix('http://').rsplit(':', 1)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    head = b'POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n'
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(head + b'Content-Length: 200000\r\n\r\n' + part + bytes(60000))
        sockets.append(sock)
    return sockets


def starvation_figures(url: str, pid: int, jpeg: bytes, *, calls: int, quick: bool) -> dict[str, Any]:
    idle_clients, hung, vanishing = (40, 10, 20) if quick else (200, 50, 100)
    idle = rest_latency(url, jpeg, calls)
    threads_idle = thread_count(pid)
    figures: dict[str, Any] = {'idle': idle, 'threads_idle': threads_idle}

    clients = Clients(url, idle_clients)
    try:
        time.sleep(2.0)  # the upgrades settle
        during = rest_latency(url, jpeg, calls)
        figures[f'{idle_clients}_idle_clients'] = {**clients.report, 'rest': during, 'threads': thread_count(pid)}
    finally:
        clients.kill()
    # Killed clients' sessions (and a long-poll's thread) last until engine.io gives them up: wait for them, so
    # that each scenario starts from an idle server.
    figures[f'{idle_clients}_idle_clients']['threads_back_after_kill_s'] = threads_back(pid, threads_idle)

    sockets = hung_posts(url, hung)
    try:
        time.sleep(0.5)
        during = rest_latency(url, jpeg, calls)
        figures[f'{hung}_hung_posts'] = {'rest': during, 'threads': thread_count(pid)}
    finally:
        for sock in sockets:
            sock.close()
    figures[f'{hung}_hung_posts']['threads_back_after_close_s'] = threads_back(pid, threads_idle)

    clients = Clients(url, vanishing)
    try:
        threads_connected = thread_count(pid)
        clients.vanish()
        vanished_at = time.monotonic()
        during = rest_latency(url, jpeg, calls)
        back = threads_back(pid, threads_idle)
        back_after = None if back is None else round(time.monotonic() - vanished_at, 1)
        figures[f'{vanishing}_vanished_clients'] = {
            **clients.report,
            'rest_right_after': during,
            'threads_connected': threads_connected,
            'threads_back_to_idle_after_s': back_after,
            'threads_end': thread_count(pid),
        }
    finally:
        clients.kill()
    worst = max(
        (v['rest'].get('p99_ms', 0.0) for v in figures.values() if isinstance(v, dict) and 'rest' in v), default=0.0
    )
    figures['p99_during_over_idle'] = round(worst / idle['p99_ms'], 2) if idle.get('p99_ms') else None
    return figures


def threads_back(pid: int, idle: int, slack: int = 2) -> float | None:
    """Seconds until ``pid`` runs at most ``idle + slack`` threads again (None: not within the ping cycle + 30 s)."""
    started = time.monotonic()
    while time.monotonic() - started < PING_INTERVAL_S + PING_TIMEOUT_S + 30:
        if thread_count(pid) <= idle + slack:
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def pss_mb(pid: int) -> float:
    """Proportional set size: resident memory with pages shared between processes (a forked worker and its
    master) counted once, split between them."""
    for line in Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines():
        if line.startswith('Pss:'):
            return round(int(line.split()[1]) * 1024 / 1e6, 1)
    raise SystemExit(f'no Pss for process {pid}')


def idle_rss(process: Process, server: str) -> dict[str, Any]:
    time.sleep(3.0)
    if server != 'gunicorn':
        return {**rss_mb(process.popen.pid), 'pss_mb': pss_mb(process.popen.pid)}
    pids = {'worker': serving_pid(process, server), 'master': process.popen.pid}
    parts = {name: {**rss_mb(pid), 'pss_mb': pss_mb(pid)} for name, pid in pids.items()}
    return {
        **parts,
        'rss_mb': round(sum(part['rss_mb'] for part in parts.values()), 1),
        'pss_mb': round(sum(part['pss_mb'] for part in parts.values()), 1),
    }


# ---------------------------------------------------------------------------------------------- modes


def serve_mock(server: str, port: int) -> int:
    """The mock detector of samples/mock_detector.py served with ``server`` (the bench's child process)."""
    import importlib.util
    import logging

    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    spec = importlib.util.spec_from_file_location('mock_detector', MOCK_DETECTOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from llnode.detector import DetectorNode

    node = DetectorNode('mocked detector', module.MockFactory())
    sessions = int(os.environ.get(SESSIONS_VARIABLE, '0'))
    if not sessions:
        return node.serve('127.0.0.1', port, server=server)
    from llnode.node.admission import REST_RESERVE, ServingLimits

    limits = ServingLimits(max_sessions=sessions, max_long_polls=sessions, max_websockets=sessions)
    return node.serve('127.0.0.1', port, server=server, threads=sessions + REST_RESERVE, limits=limits)


def idle_clients(url: str, count: int) -> None:
    """Connect ``count`` clients as robots do (no transport restriction), report, and stay until killed."""
    import socketio

    connected, refused = [], 0
    for _ in range(count):
        client = socketio.Client(reconnection=False)
        try:
            client.connect(url, socketio_path=SOCKETIO_PATH, wait_timeout=5)
            connected.append(client)
        except socketio.exceptions.ConnectionError:
            refused += 1
    time.sleep(1.0)
    transports: dict[str, int] = {}
    for client in connected:
        name = client.transport() or 'none'
        transports[name] = transports.get(name, 0) + 1
    print(json.dumps({'connected': len(connected), 'refused': refused, 'transports': transports}), flush=True)
    threading.Event().wait()


def make_reference_venv(venv: Path) -> None:
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    subprocess.run([str(venv / 'bin' / 'pip'), 'install', '-q', *REFERENCE_PACKAGES], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer calls and clients (a smoke run)')
    parser.add_argument('--reference-venv', type=Path, default=REFERENCE_VENV)
    parser.add_argument('--make-reference-venv', action='store_true', help='create the reference virtualenv first')
    parser.add_argument('--skip-starvation', action='store_true')
    parser.add_argument(
        '--raised-sessions',
        type=int,
        default=220,
        help='run the starvation figures again with the limits raised to this many sessions (0: do not)',
    )
    parser.add_argument('--serve-mock', nargs=2, metavar=('SERVER', 'PORT'), help=argparse.SUPPRESS)
    parser.add_argument('--idle-clients', nargs=2, metavar=('URL', 'COUNT'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mock:
        return serve_mock(args.serve_mock[0], int(args.serve_mock[1]))
    if args.idle_clients:
        idle_clients(args.idle_clients[0], int(args.idle_clients[1]))
        return 0

    load_before = os.getloadavg()
    if args.make_reference_venv and not (args.reference_venv / 'bin' / 'python').exists():
        make_reference_venv(args.reference_venv)
    has_reference = (args.reference_venv / 'bin' / 'python').exists()
    calls, warm_up = (50, 10) if args.quick else (200, 20)
    jpeg = camera_like_jpeg()
    frame = decoded(jpeg)
    result: dict[str, Any] = {
        'benchmark': 'serving',
        'quick': args.quick,
        'engineio_ping': {
            'interval_s': PING_INTERVAL_S,
            'timeout_s': PING_TIMEOUT_S,
            'threads_back_target_s': PING_TIMEOUT_S + THREADS_BACK_SLACK_S,
        },
    }

    with tempfile.TemporaryDirectory(prefix='llnode-bench-serving-') as tmp, local_loop(Path(tmp)) as loop_host:
        folder = Path(tmp)
        # Head to head: every detector up at once, measured in turns.
        with contextlib.ExitStack() as stack:
            urls, processes = {}, {}
            if has_reference:
                urls['reference_uvicorn'], _ = stack.enter_context(
                    reference_detector(args.reference_venv, loop_host, folder)
                )
            for server in ('gunicorn', 'waitress', 'werkzeug'):
                urls[server], processes[server] = stack.enter_context(llnode_detector(loop_host, server, folder))
            websocket_urls = {name: url for name, url in urls.items() if name != 'waitress'}
            websocket = websocket_figures(websocket_urls, frame, warm_up=warm_up, calls=calls)
            websocket['client'] = 'python-socketio Client (threads, websocket-client)'
            rosys: dict[str, Any] = {'client': 'python-socketio AsyncClient (aiohttp), as rosys connects it'}
            if not has_reference:
                websocket['reference_uvicorn'] = {'skipped': f'no virtualenv at {args.reference_venv}'}
                rosys['skipped'] = f'it runs from the reference virtualenv, and there is none at {args.reference_venv}'
            else:
                ratio = websocket['gunicorn']['p50_ms'] / websocket['reference_uvicorn']['p50_ms']
                websocket['gunicorn_over_reference_p50'] = round(ratio, 2)
                rosys.update(
                    rosys_client_figures(args.reference_venv, websocket_urls, frame, warm_up=warm_up, calls=calls)
                )
                ratio = rosys['gunicorn']['p50_ms'] / rosys['reference_uvicorn']['p50_ms']
                rosys['gunicorn_over_reference_p50'] = round(ratio, 2)
            rest_servers = ('gunicorn', 'waitress')
            rest = rest_figures(
                {name: urls[name] for name in rest_servers},
                {name: serving_pid(processes[name], name) for name in rest_servers},
                jpeg,
                calls=calls,
                clients=8,
            )
            rss = {server: idle_rss(processes[server], server) for server in ('gunicorn', 'waitress')}
        result.update(socketio_websocket=websocket, socketio_websocket_rosys_client=rosys, rest=rest, idle_rss=rss)
        # Starvation: one server at a time.
        if not args.skip_starvation:
            for key, sessions in (('starvation', 0), ('starvation_raised_limits', args.raised_sessions)):
                if key != 'starvation' and not sessions:
                    continue
                starvation: dict[str, Any] = {'sessions_limit': sessions or 'default'}
                (folder / key).mkdir()
                for server in ('gunicorn', 'waitress', 'werkzeug'):
                    with llnode_detector(loop_host, server, folder / key, sessions) as (url, process):
                        pid = serving_pid(process, server)
                        starvation[server] = starvation_figures(url, pid, jpeg, calls=calls, quick=args.quick)
                result[key] = starvation
    result['targets_met'] = targets_met(result)
    result['machine'] = machine(load_before)
    print(json.dumps(result))
    return 0


def targets_met(result: dict[str, Any]) -> dict[str, Any]:
    met: dict[str, Any] = {}
    for key, name in (
        ('socketio_websocket', 'websocket'),
        ('socketio_websocket_rosys_client', 'websocket_rosys_client'),
    ):
        ratio = result[key].get('gunicorn_over_reference_p50')
        met[f'{name}_p50_vs_reference'] = None if ratio is None else ratio <= TARGET_WEBSOCKET_RATIO
    gunicorn, waitress = result['rest']['gunicorn'], result['rest']['waitress']
    met['rest_p50_no_worse_than_waitress'] = gunicorn['sequential']['p50_ms'] <= waitress['sequential']['p50_ms']
    met['rest_8_clients_no_worse_than_waitress'] = (
        gunicorn['8_clients_requests_per_s_mean'] >= waitress['8_clients_requests_per_s_mean']
    )
    met['rest_cpu_per_request_no_worse_than_waitress'] = (
        gunicorn['sequential']['cpu_ms_per_request'] <= waitress['sequential']['cpu_ms_per_request']
    )
    for key in ('starvation', 'starvation_raised_limits'):
        for server, figures in result.get(key, {}).items():
            if server == 'sessions_limit':
                continue
            ratio = figures.get('p99_during_over_idle')
            met[f'{key}_{server}_p99_within_2x'] = ratio is not None and ratio <= TARGET_STARVED_P99_RATIO
            vanished = next(v for k, v in figures.items() if k.endswith('_vanished_clients'))
            back = vanished['threads_back_to_idle_after_s']
            met[f'{key}_{server}_threads_back'] = back is not None and back <= PING_TIMEOUT_S + THREADS_BACK_SLACK_S
    return met


if __name__ == '__main__':
    sys.exit(main())
