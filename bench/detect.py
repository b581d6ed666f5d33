"""Detector latency, throughput and memory against the mock detector in a real subprocess; prints one JSON line.

The mock detector (``samples/mock_detector.py``, one box and one point per image) runs as its own process, served
by waitress and then by werkzeug, and follows a local Loop that runs as a second process (``llnode loop --demo``;
it deploys the demo model 1.1 in format ``mocked``). The Loop is a process of its own, not a thread of this one,
so its work (status syncs, outbox uploads) never holds this process's GIL while a client waits for an answer.
Every figure uses one 640x480 JPEG with camera-like content (gradients, shapes, slight blur and sensor noise).

- REST ``POST /detect``: sequential latency over one keep-alive session, then ``--clients`` threads with a
  session each (requests/s and latency); ``autoupload: disabled`` unless said otherwise. With the real outbox
  (``llnode.detector.outbox``), ``autoupload: all`` against ``disabled`` in alternating blocks (waitress).
- Socket.IO ``detect``: latency of a raw 640x480x3 uint8 array and of the JPEG, over WebSocket (werkzeug) and
  over long-polling (waitress, which cannot carry WebSocket).
- RSS of the detector process when ready, and idle (3 s after the requests), and what the imports alone cost.
  llnode's bytecode is compiled first, as ``pip install`` does: with ``PYTHONDONTWRITEBYTECODE`` set (this
  sandbox sets it) or stale ``.pyc`` files, every start would compile the sources again, which leaves ~1.8 MB of
  heap fragments that no installed node has.
- Torch (``--device``, CPU by default): a small conv net as a :class:`TorchDetectorLogic`, images/s of
  ``batch_evaluate`` at batch sizes 1, 8 and 32, and ``--clients`` threads through an ``InferenceWorker``
  against one thread. torch is imported only there.

    python bench/detect.py [--quick] [--servers waitress,werkzeug] [--device cpu|cuda|auto] [--torch-threads N] [--no-torch]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.util
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
import socketio
from machine import machine  # bench/machine.py: benchmarks run as scripts from bench/
from PIL import Image, ImageDraw, ImageFilter
from urllib3 import encode_multipart_formdata

ROOT = Path(__file__).resolve().parent.parent
MOCK_DETECTOR = ROOT / 'samples' / 'mock_detector.py'
SOCKETIO_PATH = '/ws/socket.io'
WIDTH, HEIGHT = 640, 480
JPEG_QUALITY = 90
USER, PASSWORD = 'bench', 'bench'
ORGANIZATION, PROJECT = 'zauberzeug', 'demo'  # the local Loop's demo project

#: how long a process may take to listen, and the detector to download and load its model
START_TIMEOUT = 60.0
#: one request or Socket.IO call
CALL_TIMEOUT = 10.0

TARGET_REST_P50_MS = 3.0
TARGET_REST_CONCURRENT_RPS = 500.0
TARGET_SOCKETIO_WEBSOCKET_RAW_P50_MS = 5.0
TARGET_IDLE_RSS_MB = 60.0
TARGET_AUTOUPLOAD_RATIO = 1.2
TARGET_TORCH_CONCURRENT_RATIO_GPU = 3.0


# ---------------------------------------------------------------------------------------------- figures


def latency_figures(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and mean of ``seconds`` in milliseconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    p99 = statistics.quantiles(ms, n=100, method='inclusive')[98] if len(ms) > 1 else ms[0]
    return {
        'p50_ms': round(statistics.median(ms), 3),
        'p99_ms': round(p99, 3),
        'mean_ms': round(statistics.fmean(ms), 3),
    }


def camera_like_jpeg(width: int = WIDTH, height: int = HEIGHT, quality: int = JPEG_QUALITY) -> bytes:
    """A picture like a camera's: lit gradient, a few solid shapes, slight blur and sensor noise (not pure noise,
    which would make decoding slow and unrepresentative)."""
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    light = 0.55 + 0.45 * (1.0 - ((xs - 0.3) ** 2 + (ys - 0.2) ** 2))
    floor = np.array([150.0, 140.0, 120.0], np.float32)
    pixels = light[..., None] * floor[None, None, :] + 25.0 * ys[..., None]
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), 'RGB')
    pen = ImageDraw.Draw(picture)
    pen.rectangle((60, 250, 230, 420), fill=(70, 90, 160), outline=(30, 30, 30), width=3)
    pen.ellipse((300, 120, 420, 240), fill=(200, 60, 50), outline=(40, 20, 20), width=2)
    pen.polygon([(470, 400), (600, 400), (535, 270)], fill=(60, 150, 70))
    pen.line((0, 200, width, 180), fill=(90, 80, 70), width=5)
    for i in range(12):
        pen.ellipse((20 + 50 * i, 40, 40 + 50 * i, 60), fill=(230, 220, 80 + 10 * i))
    picture = picture.filter(ImageFilter.GaussianBlur(1.2))
    noise = np.random.default_rng(0).normal(0.0, 2.5, (height, width, 3)).astype(np.float32)
    noisy = np.clip(np.asarray(picture, np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy, 'RGB').save(buffer, 'JPEG', quality=quality)
    return buffer.getvalue()


def decoded(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as picture:
        return np.asarray(picture.convert('RGB'))


def run_clients(
    count: int, requests_each: int, one_call: Callable[[Any], float], make_state: Callable[[], Any]
) -> tuple[float, list[float]]:
    """``count`` named threads, each with its own state (a session), call ``one_call`` ``requests_each`` times,
    all starting together; returns the wall time and every latency. Any failure ends the benchmark."""
    barrier = threading.Barrier(count + 1, timeout=START_TIMEOUT)
    latencies: list[list[float]] = [[] for _ in range(count)]
    errors: list[BaseException] = []
    done = threading.Event()

    def client(index: int) -> None:
        state = None
        try:
            state = make_state()
            barrier.wait()
            for _ in range(requests_each):
                if done.is_set():
                    return
                latencies[index].append(one_call(state))
        except BaseException as e:
            errors.append(e)
            done.set()  # the others stop early: the run is void anyway
            barrier.abort()  # nobody waits for a client that will not come
        finally:
            if state is not None:
                with contextlib.suppress(Exception):
                    state.close()

    threads = [threading.Thread(target=client, args=(i,), name=f'bench-client-{i}', daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed to start: reported below
        barrier.wait()
    started = time.perf_counter()
    deadline = time.monotonic() + CALL_TIMEOUT * requests_each + START_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    wall = time.perf_counter() - started
    done.set()
    if any(thread.is_alive() for thread in threads):
        raise SystemExit('benchmark clients did not finish in time')
    if errors:
        raise SystemExit(f'a benchmark client failed: {errors[0]!r}')
    return wall, [s for per_client in latencies for s in per_client]


def run_in_thread(work: Callable[[], None], name: str, timeout: float) -> None:
    """``work()`` in a named thread, waited for up to ``timeout``; its exception is raised here."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise SystemExit(f'{name} did not finish within {timeout:.0f} s')
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB (10^6 bytes)."""
    fields = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        key, _, value = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
            fields[key] = round(int(value.split()[0]) * 1024 / 1e6, 1)
    return {'rss_mb': fields['VmRSS'], 'peak_rss_mb': fields['VmHWM']}


CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def cpu_now(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process ``pid`` and by this process (the clients)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, time.process_time()


def cpu_figures(before: tuple[float, float], pid: int, count: int) -> dict[str, float]:
    """Server and client CPU milliseconds per call since ``before`` (clock ticks: 10 ms resolution overall)."""
    server, client = cpu_now(pid)
    return {
        'server_cpu_ms_per_call': round((server - before[0]) * 1000 / count, 3),
        'client_cpu_ms_per_call': round((client - before[1]) * 1000 / count, 3),
    }


@dataclass
class Process:
    """A child process whose output goes to a log file (shown when it fails to come up)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
        with log.open('wb') as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        return cls(name, popen, log)

    def wait_until(self, url: str, what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``url`` until it answers 200; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise SystemExit(f'{self.name} exited with {self.popen.returncode} before {what}:\n{self.tail()}')
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f'{self.name}: no {what} within {timeout:.0f} s:\n{self.tail()}')
            time.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        return '\n'.join(self.log.read_text(errors='replace').splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@contextlib.contextmanager
def local_loop(folder: Path) -> Iterator[str]:
    """A local Loop process with the demo project; yields its ``host:port``."""
    port = free_port()
    args = [sys.executable, '-m', 'llnode.cli', 'loop', '--host', '127.0.0.1', '--port', str(port)]
    args += ['--data', str(folder / 'loop'), '--demo', '--demo-images', '8', '--user', f'{USER}:{PASSWORD}']
    process = Process.start('local loop', [*args, '--log-level', 'WARNING'], folder / 'loop.log')
    try:
        process.wait_until(f'http://127.0.0.1:{port}/api/status', 'answer on /api/status')
        yield f'127.0.0.1:{port}'
    finally:
        process.stop()


@contextlib.contextmanager
def mock_detector(loop_host: str, server: str, folder: Path) -> Iterator[tuple[str, Process]]:
    """The mock detector process served by ``server``, ready (model loaded); yields its URL and the process."""
    port = free_port()
    env = {
        **os.environ,
        'LOOP_HOST': loop_host,
        'LOOP_USERNAME': USER,
        'LOOP_PASSWORD': PASSWORD,
        'LOOP_ORGANIZATION': ORGANIZATION,
        'LOOP_PROJECT': PROJECT,
        'DATA_FOLDER': str(folder / f'detector-{server}'),
    }
    args = [sys.executable, str(MOCK_DETECTOR), '--host', '127.0.0.1', '--port', str(port), '--server', server]
    process = Process.start(
        f'mock detector ({server})', [*args, '--log-level', 'WARNING'], folder / f'detector-{server}.log', env
    )
    url = f'http://127.0.0.1:{port}'
    try:
        process.wait_until(f'{url}/readyz', 'readiness (model 1.1 loaded)')
        yield url, process
    finally:
        process.stop()


# ---------------------------------------------------------------------------------------------- REST


class RestDetect:
    """``POST /detect`` with a multipart body encoded once (the client's own encoding is not what we measure)."""

    def __init__(self, url: str, jpeg: bytes) -> None:
        self.url = f'{url}/detect'
        self.body, content_type = encode_multipart_formdata({'file': ('image.jpg', jpeg, 'image/jpeg')})
        self.headers = {'Content-Type': content_type}

    def call(self, session: requests.Session, autoupload: str = 'disabled') -> float:
        headers = {**self.headers, 'autoupload': autoupload}
        started = time.perf_counter()
        response = session.post(self.url, data=self.body, headers=headers, timeout=CALL_TIMEOUT)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f'POST /detect answered {response.status_code}: {response.text[:300]}')
        return elapsed

    def check(self, session: requests.Session) -> None:
        """The mock's answer: one box at 0.42, one point at 0.9."""
        headers = {**self.headers, 'autoupload': 'disabled'}
        answer = session.post(self.url, data=self.body, headers=headers, timeout=CALL_TIMEOUT).json()
        boxes, points = answer.get('box_detections'), answer.get('point_detections')
        if not (boxes and points and boxes[0]['confidence'] == 0.42 and points[0]['confidence'] == 0.9):
            raise SystemExit(f'unexpected /detect answer: {answer}')


def timed_get(session: requests.Session, url: str) -> float:
    started = time.perf_counter()
    response = session.get(url, timeout=CALL_TIMEOUT)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f'GET {url} answered {response.status_code}: {response.text[:300]}')
    return elapsed


def decode_ms(jpeg: bytes, rounds: int = 50) -> float:
    """Median time of the detector's own decoding of ``jpeg`` (in this process; the server does the same work)."""
    from llnode.detector.images import decode_image

    decode_image(jpeg)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        decode_image(jpeg)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def rest_figures(
    url: str, jpeg: bytes, pid: int, *, warm_up: int, sequential: int, clients: int, concurrent: int
) -> dict[str, Any]:
    """Sequential and concurrent ``/detect``, with the CPU both sides spent, and where a request's time goes:
    ``GET /readyz`` (HTTP stack and client alone), ``/detect`` of a 16x16 JPEG (plus multipart, node, JSON), the
    decode of the 640x480 JPEG."""
    rest = RestDetect(url, jpeg)
    tiny = RestDetect(url, camera_like_jpeg(16, 16))
    probes = max(20, sequential // 4)
    with requests.Session() as session:
        rest.check(session)
        for _ in range(warm_up):
            rest.call(session)
        before = cpu_now(pid)
        sequential_s = [rest.call(session) for _ in range(sequential)]
        sequential_cpu = cpu_figures(before, pid, sequential)
        readyz_s = [timed_get(session, f'{url}/readyz') for _ in range(probes)]
        tiny_s = [tiny.call(session) for _ in range(probes)]
    each = max(1, concurrent // clients)
    before = cpu_now(pid)
    wall, concurrent_s = run_clients(clients, each, rest.call, requests.Session)
    concurrent_cpu = cpu_figures(before, pid, clients * each)
    return {
        'sequential': {'requests': sequential, **latency_figures(sequential_s), **sequential_cpu},
        'concurrent': {
            'clients': clients,
            'requests': clients * each,
            'requests_per_s': round(clients * each / wall, 1),
            **latency_figures(concurrent_s),
            **concurrent_cpu,
        },
        'breakdown_p50_ms': {
            'readyz': latency_figures(readyz_s)['p50_ms'],
            'detect_16x16_jpeg': latency_figures(tiny_s)['p50_ms'],
            'decode_640x480_jpeg': decode_ms(jpeg),
        },
    }


def autoupload_figures(url: str, jpeg: bytes, pid: int, *, blocks: int, per_block: int) -> dict[str, Any]:
    """Sequential ``/detect`` with ``autoupload: all`` against ``disabled``, in alternating blocks so that a
    drift of the machine's load hits both alike; the images sent with ``all`` go through the outbox to the Loop.

    Twice: with the outbox uploading (``continuous_upload``, the default) and with it ``stopped`` (the writer
    alone), so the cost of the hand-over and the disk write shows apart from the uploads' CPU. The server CPU of
    a block is charged to its mode; work the outbox threads do after their block ends lands in the next one.
    """
    rest = RestDetect(url, jpeg)
    figures: dict[str, Any] = {'requests_each': blocks * per_block}
    with requests.Session() as session:
        for _ in range(per_block):
            rest.call(session)
        for outbox_mode in ('continuous_upload', 'stopped'):
            answer = session.put(f'{url}/outbox_mode', data=outbox_mode, timeout=START_TIMEOUT)
            if answer.status_code != 200:
                raise SystemExit(f'PUT /outbox_mode {outbox_mode} answered {answer.status_code}: {answer.text}')
            times: dict[str, list[float]] = {'disabled': [], 'all': []}
            cpu = {'disabled': 0.0, 'all': 0.0}
            for _ in range(blocks):
                for mode in ('disabled', 'all'):
                    before = cpu_now(pid)[0]
                    times[mode].extend(rest.call(session, mode) for _ in range(per_block))
                    cpu[mode] += cpu_now(pid)[0] - before
            disabled, upload_all = latency_figures(times['disabled']), latency_figures(times['all'])
            figures[f'outbox_{outbox_mode}'] = {
                'disabled': disabled,
                'all': upload_all,
                'ratio_p50_all_to_disabled': round(upload_all['p50_ms'] / disabled['p50_ms'], 3),
                'server_cpu_ms_per_request': {
                    mode: round(seconds * 1000 / (blocks * per_block), 3) for mode, seconds in cpu.items()
                },
            }
        session.put(f'{url}/outbox_mode', data='continuous_upload', timeout=START_TIMEOUT).raise_for_status()
    figures['ratio_p50_all_to_disabled'] = figures['outbox_continuous_upload']['ratio_p50_all_to_disabled']
    return figures


def uploaded_images(loop_host: str, expected: int, timeout: float) -> int:
    """Images the Loop received from outboxes (control API), once ``expected`` arrived or ``timeout`` passed."""
    base = f'http://{loop_host}'
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.post(f'{base}/api/login', data={'username': USER, 'password': PASSWORD}, timeout=CALL_TIMEOUT)
        while True:
            answer = session.get(f'{base}/control/projects/{ORGANIZATION}/{PROJECT}/uploads', timeout=CALL_TIMEOUT)
            answer.raise_for_status()
            count = sum(len(batch['image_ids']) for batch in answer.json()['batches'] if batch['status'] == 200)
            if count >= expected or time.monotonic() > deadline:
                return count
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- Socket.IO


class SocketDetect:
    """``detect`` calls over one python-socketio client (WebSocket only, or long-polling only)."""

    def __init__(self, url: str, transport: str) -> None:
        self.client = socketio.Client(reconnection=False)
        self.client.connect(url, socketio_path=SOCKETIO_PATH, transports=[transport], wait_timeout=CALL_TIMEOUT)
        self.transport = self.client.transport()
        if self.transport != transport:
            raise SystemExit(f'Socket.IO connected over {self.transport}, not {transport}')

    def call(self, payload: dict[str, Any]) -> float:
        started = time.perf_counter()
        answer = self.client.call('detect', payload, timeout=CALL_TIMEOUT)
        elapsed = time.perf_counter() - started
        if not isinstance(answer, dict) or len(answer.get('box_detections') or []) != 1:
            raise SystemExit(f'unexpected Socket.IO detect answer: {answer}')
        return elapsed

    def close(self) -> None:
        self.client.disconnect()


def socketio_figures(
    url: str, transport: str, jpeg: bytes, image: np.ndarray, pid: int, *, warm_up: int, calls: int
) -> dict[str, Any]:
    payloads = {
        'raw': {
            'image': {'bytes': image.tobytes(), 'dtype': str(image.dtype), 'shape': list(image.shape)},
            'autoupload': 'disabled',
        },
        'jpeg': {'image': {'format': 'jpeg', 'bytes': jpeg}, 'autoupload': 'disabled'},
    }
    figures: dict[str, Any] = {'transport': transport}
    link = SocketDetect(url, transport)
    try:
        figures['transport'] = link.transport
        for name, payload in payloads.items():
            for _ in range(warm_up):
                link.call(payload)
            before = cpu_now(pid)
            times = [link.call(payload) for _ in range(calls)]
            figures[name] = {'calls': calls, **latency_figures(times), **cpu_figures(before, pid, calls)}
    finally:
        link.close()
    return figures


# ---------------------------------------------------------------------------------------------- memory


IMPORT_PROBE = """
import importlib, json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return round(int(line.split()[1]) * 1024 / 1e6, 1)
steps = [('python', rss())]
for name in sys.argv[1:]:
    importlib.import_module(name)
    steps.append((name, rss()))
print(json.dumps({'steps': steps, 'modules': len(sys.modules)}))
"""

#: what the running mock detector has imported, in an order that charges each big library to itself
IMPORT_STEPS = (
    'numpy',
    'PIL.Image',
    'requests',
    'werkzeug',
    'flask',
    'engineio',
    'socketio',
    'waitress',
    'simple_websocket',
    'llnode.detector',
    'llnode.detector.node',
    'llnode.detector.rest',
    'llnode.detector.socket_events',
    'llnode.detector.outbox',
    'llnode.detector.relevance',
    'llnode.node.serving',
    'llnode.loop.socket',
)


def compile_llnode() -> bool:
    """Write llnode's missing or stale ``.pyc`` files, as an install does; True if all compiled."""
    return bool(compileall.compile_dir(ROOT / 'llnode', quiet=1))


def import_costs() -> dict[str, Any]:
    """RSS of a fresh interpreter after each import of ``IMPORT_STEPS``: what memory the code alone takes."""
    steps = [name for name in IMPORT_STEPS if importlib.util.find_spec(name.split('.')[0]) is not None]
    done = subprocess.run(
        [sys.executable, '-c', IMPORT_PROBE, *steps], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        return {'error': done.stderr.strip().splitlines()[-1:]}
    probe = json.loads(done.stdout)
    previous = 0.0
    added = {}
    for name, rss in probe['steps']:
        added[name] = round(rss - previous, 1)
        previous = rss
    return {'total_rss_mb': previous, 'modules': probe['modules'], 'added_rss_mb_by_import': added}


def idle_rss(process: Process, idle_s: float = 3.0) -> dict[str, float]:
    # The process settles: no request in flight, and a served node hands free memory back one second after the
    # requests pause (llnode.node.memory); nothing here needs to stop early.
    time.sleep(idle_s)
    return rss_mb(process.popen.pid)


# ---------------------------------------------------------------------------------------------- torch


def torch_figures(
    image: np.ndarray,
    folder: Path,
    *,
    device: str,
    half: bool,
    threads: int | None,
    seconds: float,
    calls: int,
    clients: int,
    rounds: int,
) -> dict[str, Any]:
    """A small conv net (3 strided convs, 1x1 head) as a TorchDetectorLogic on 640x480 inputs.

    ``threads``: torch's intra-op CPU threads (None: torch's default, one per core).
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    from llnode.detector.batching import InferenceWorker
    from llnode.detector.torch_logic import BatchMeta, TorchDetectorLogic
    from llnode.schema import BoxDetection, Category, ImageMetadata, ModelInformation

    resolution = 256

    class SmallNet(torch.nn.Module):
        """Downsamples 8x to a grid; channel 0 is objectness, 1..4 a box (centre offsets and size) per cell."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(64, 5, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    class SmallNetLogic(TorchDetectorLogic):
        """The best cell of each image as one box; records the batch sizes it was given."""

        def load_module(self, model_folder: Path, model_info: ModelInformation, device: torch.device) -> Any:
            self.batch_sizes: Counter[int] = Counter()
            net = SmallNet()
            net.load_state_dict(torch.load(model_folder / 'weights.pt', map_location=device, weights_only=True))
            return net

        def to_detections(self, outputs: Any, batch: BatchMeta) -> list[ImageMetadata]:
            self.batch_sizes[len(batch)] += 1
            count, _, _, cols = outputs.shape
            scores = outputs[:, 0].reshape(count, -1).float()
            best = scores.argmax(dim=1)
            boxes = torch.sigmoid(outputs[:, 1:].reshape(count, 4, -1).float())
            chosen = boxes.gather(2, best[:, None, None].expand(count, 4, 1))[:, :, 0]
            confidence = torch.sigmoid(scores.gather(1, best[:, None]))[:, 0]
            cell = batch.resolution / cols
            results = []
            for geometry, index, (dx, dy, w, h), conf in zip(
                batch.images, best.tolist(), chosen.tolist(), confidence.tolist(), strict=True
            ):
                cx, cy = (index % cols + dx) * cell, (index // cols + dy) * cell
                width, height = w * batch.resolution / 2, h * batch.resolution / 2
                x, y, bw, bh = geometry.box_to_image(cx - width / 2, cy - height / 2, width, height)
                box = BoxDetection('thing', x, y, bw, bh, batch.model_name, round(conf, 3), 'c1')
                results.append(ImageMetadata(box_detections=[box]))
            return results

    torch.manual_seed(0)
    model_folder = folder / 'torch-model'
    model_folder.mkdir()
    torch.save(SmallNet().state_dict(), model_folder / 'weights.pt')
    info = ModelInformation(
        id='bench-torch',
        organization='bench',
        project='torch',
        version='1.0',
        resolution=resolution,
        categories=[Category(id='c1', name='thing', type='box')],
        model_root_path=str(model_folder),
    )
    logic = SmallNetLogic(info, device=device, half=half)
    figures: dict[str, Any] = {
        'device': str(logic.device),
        'half': logic.half,
        'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'resolution': resolution,
        'input': f'{image.shape[1]}x{image.shape[0]} uint8 RGB',
    }
    batches = {size: [image.copy() for _ in range(size)] for size in (1, 8, 32)}
    call_times: dict[int, list[float]] = {size: [] for size in batches}

    def measure_batches() -> None:
        for batch in batches.values():
            logic.batch_evaluate(batch)  # warm-up: allocator, kernels
        for _ in range(rounds):  # sizes take turns, so a burst of other work on the machine hits all alike
            for size, batch in batches.items():
                started = time.perf_counter()
                calls_before = len(call_times[size])
                while len(call_times[size]) - calls_before < 2 or time.perf_counter() - started < seconds / rounds:
                    t0 = time.perf_counter()
                    logic.batch_evaluate(batch)
                    call_times[size].append(time.perf_counter() - t0)

    # In a thread of its own, as the node runs a logic (its inference worker's thread). On a busy 2-core machine
    # torch's OpenMP work started from the main thread ran 3 to 20 times slower than the same call from another
    # thread, which would make these figures incomparable with the worker's.
    run_in_thread(measure_batches, 'bench-torch-batches', timeout=seconds * 3 + 120)
    for size, times in call_times.items():  # the median call, not the total: bursts of load must not decide it
        figures[f'batch_{size}_images_per_s'] = round(size / statistics.median(times), 1)

    class Caller:
        """The per-client state ``run_clients`` wants; the worker needs none."""

        def close(self) -> None:
            pass

    def one(_: Caller) -> float:
        t0 = time.perf_counter()
        worker.evaluate(image, timeout=CALL_TIMEOUT * 3)
        return time.perf_counter() - t0

    sequential_rates: list[float] = []
    concurrent_rates: list[float] = []
    sequential_s: list[float] = []
    concurrent_s: list[float] = []
    each = max(1, calls // clients)
    with InferenceWorker(logic, max_batch_size=8, max_wait_ms=2.0, name='bench-inference') as worker:
        worker.evaluate(image, timeout=CALL_TIMEOUT)
        for _ in range(rounds):  # alternating rounds, median rate of each: load drift hits both alike
            wall, times = run_clients(1, clients * each, one, Caller)
            sequential_rates.append(clients * each / wall)
            sequential_s += times
            logic.batch_sizes.clear()
            wall, times = run_clients(clients, each, one, Caller)
            concurrent_rates.append(clients * each / wall)
            concurrent_s += times
        batch_count = sum(logic.batch_sizes.values())
        mean_batch = sum(size * n for size, n in logic.batch_sizes.items()) / max(1, batch_count)
    logic.close()
    sequential_rate, concurrent_rate = statistics.median(sequential_rates), statistics.median(concurrent_rates)
    figures['worker'] = {
        'max_batch_size': 8,
        'sequential_images_per_s': round(sequential_rate, 1),
        'sequential': latency_figures(sequential_s),
        'concurrent_clients': clients,
        'concurrent_images_per_s': round(concurrent_rate, 1),
        'concurrent': latency_figures(concurrent_s),
        'concurrent_mean_batch': round(mean_batch, 2),
        'ratio_concurrent_to_sequential': round(concurrent_rate / sequential_rate, 2),
    }
    return figures


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fewer requests and shorter runs (about 30 s)')
    parser.add_argument('--servers', default='waitress,werkzeug', help='comma-separated: waitress, werkzeug')
    parser.add_argument('--clients', type=int, default=8, help='concurrent clients (REST and torch worker)')
    parser.add_argument('--requests', type=int, default=None, help='sequential REST requests (default 1000)')
    parser.add_argument('--device', default='cpu', help='torch device: cpu, cuda, cuda:N or auto (default cpu)')
    parser.add_argument('--half', action='store_true', help='torch in float16 (CUDA only)')
    parser.add_argument(
        '--torch-threads',
        type=int,
        default=None,
        help="torch's CPU threads (default: 1 for --device cpu, torch's own default otherwise; 0: torch's default)",
    )
    parser.add_argument('--no-torch', action='store_true', help='skip the torch section')
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(',') if s.strip()]
    if not servers or any(s not in ('waitress', 'werkzeug') for s in servers):
        parser.error(f'--servers must name waitress and/or werkzeug, got {args.servers!r}')
    if args.clients < 1:
        parser.error('--clients must be at least 1')
    if args.requests is not None and args.requests < 2:
        parser.error('--requests must be at least 2')
    if args.torch_threads is not None and args.torch_threads < 0:
        parser.error('--torch-threads must be 0 (torch default) or more')
    if not args.no_torch:
        check_torch_device(args.device)
    quick = args.quick
    sequential = args.requests or (200 if quick else 1000)
    counts = {
        'warm_up': 20 if quick else 100,
        'sequential': sequential,
        'clients': args.clients,
        'concurrent': 800 if quick else 4000,
    }
    socket_calls = 100 if quick else 400
    has_outbox = importlib.util.find_spec('llnode.detector.outbox') is not None

    jpeg = camera_like_jpeg()
    image = decoded(jpeg)
    compiled = compile_llnode()
    load_before = os.getloadavg()  # other work on the machine skews the figures; the line says how busy it was
    result: dict[str, Any] = {'benchmark': 'detect', 'quick': quick}
    result['image'] = {'size': f'{WIDTH}x{HEIGHT}', 'jpeg_bytes': len(jpeg), 'jpeg_quality': JPEG_QUALITY}
    with tempfile.TemporaryDirectory(prefix='llnode-bench-detect-') as tmp:
        folder = Path(tmp)
        with local_loop(folder) as loop_host:
            for server in servers:
                with mock_detector(loop_host, server, folder) as (url, process):
                    figures: dict[str, Any] = {'ready': rss_mb(process.popen.pid)}
                    figures['rest'] = rest_figures(url, jpeg, process.popen.pid, **counts)
                    transport = 'websocket' if server == 'werkzeug' else 'polling'
                    figures['socketio'] = socketio_figures(
                        url, transport, jpeg, image, process.popen.pid, warm_up=counts['warm_up'], calls=socket_calls
                    )
                    figures['idle'] = idle_rss(process)
                    if has_outbox and server == 'waitress':
                        blocks, per_block = (4, 50) if quick else (8, 100)
                        upload = autoupload_figures(url, jpeg, process.popen.pid, blocks=blocks, per_block=per_block)
                        sent = 2 * blocks * per_block
                        upload['loop_received'] = f'{uploaded_images(loop_host, sent, timeout=30)} of {sent}'
                        figures['autoupload'] = upload
                    result[server] = figures
        result['import_costs'] = import_costs()
        if not args.no_torch:
            result['torch'] = torch_figures(
                image,
                folder,
                device=args.device,
                half=args.half,
                threads=torch_threads(args.torch_threads, args.device),
                seconds=1.0 if quick else 3.0,
                calls=64 if quick else 160,
                clients=args.clients,
                rounds=3,
            )
    result['machine'] = machine(load_before)
    result['machine']['llnode_bytecode_compiled_first'] = compiled
    result['targets'] = {
        'rest_sequential_p50_ms': TARGET_REST_P50_MS,
        'rest_concurrent_requests_per_s': TARGET_REST_CONCURRENT_RPS,
        'socketio_websocket_raw_p50_ms': TARGET_SOCKETIO_WEBSOCKET_RAW_P50_MS,
        'idle_rss_mb': TARGET_IDLE_RSS_MB,
        'autoupload_all_to_disabled_p50_ratio': TARGET_AUTOUPLOAD_RATIO,
        'torch_gpu_concurrent_to_sequential_ratio': TARGET_TORCH_CONCURRENT_RATIO_GPU,
    }
    result['met'] = targets_met(result)
    print(json.dumps(result))
    return 0


def check_torch_device(device: str) -> None:
    """Fail at once, not after the HTTP sections, when torch or the asked device is missing (checked in a child
    process: this one imports torch only in its torch section)."""
    probe = 'import sys; from llnode.detector.torch_logic import choose_device; print(choose_device(sys.argv[1]))'
    done = subprocess.run(
        [sys.executable, '-c', probe, device], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ['unknown error'])[-1]
        raise SystemExit(f'torch device {device!r} cannot be used: {reason} (or run with --no-torch)')


def torch_threads(asked: int | None, device: str) -> int | None:
    """Intra-op threads for the torch section. On CPU one by default: on this 2-core machine, with other work
    running, torch's default of one OpenMP thread per core made batch figures swing between 6 and 480 images/s
    (OpenMP workers spinning for a core that another process holds); one thread gave steady figures."""
    if asked is not None:
        return asked or None
    return 1 if device == 'cpu' else None


def targets_met(result: dict[str, Any]) -> dict[str, bool]:
    """Each target against the figures that exist (REST and RSS on the default server, waitress, when run)."""
    met: dict[str, bool] = {}
    default = result.get('waitress') or result.get('werkzeug')
    if default is not None:
        met['rest_sequential_p50'] = default['rest']['sequential']['p50_ms'] <= TARGET_REST_P50_MS
        met['rest_concurrent_rps'] = default['rest']['concurrent']['requests_per_s'] >= TARGET_REST_CONCURRENT_RPS
        met['idle_rss'] = default['idle']['rss_mb'] <= TARGET_IDLE_RSS_MB
    if 'werkzeug' in result:
        raw = result['werkzeug']['socketio']['raw']['p50_ms']
        met['socketio_websocket_raw_p50'] = raw <= TARGET_SOCKETIO_WEBSOCKET_RAW_P50_MS
    upload = (result.get('waitress') or {}).get('autoupload')
    if upload is not None:
        met['autoupload_ratio'] = upload['ratio_p50_all_to_disabled'] <= TARGET_AUTOUPLOAD_RATIO
    torch_figs = result.get('torch')
    if torch_figs is not None and torch_figs['device'].startswith('cuda'):
        ratio = torch_figs['worker']['ratio_concurrent_to_sequential']
        met['torch_gpu_concurrent_ratio'] = ratio >= TARGET_TORCH_CONCURRENT_RATIO_GPU
    return met


if __name__ == '__main__':
    sys.exit(main())
