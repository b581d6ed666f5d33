"""The trainer side of the demo: :class:`ShapesTrainer`, an in-process torch training of ShapesNet
(:mod:`llnode.demo.shapes_net`) that reports a real confusion matrix per epoch, and scales on torch.distributed.

One process (``nproc=1``): the loop runs in the node's training thread. With ``nproc=N`` the same loop runs on N
ranks under torch.distributed (gloo, CPU): the training thread is rank 0 and spawns ``N - 1`` worker processes
(fresh interpreters, see :class:`Workers`) that meet it on a free loopback port; each rank trains on its
DistributedSampler share with DistributedDataParallel and evaluates its share of the test images, and the counts are
summed, so every rank holds the same confusion matrix. Rank 0 uses the process's default process group: one
distributed training per process at a time. Only rank 0 talks to the Loop: the library callbacks that publish, save and
report progress are limited to rank 0.

Stop and abort reach every rank at the same batch: rank 0 sends its stop/abort state to all ranks after each batch
(a broadcast) and with the evaluation counts after each epoch (an all-reduce), and all ranks — rank 0 included —
read stop and abort from that shared flag, so they leave the loop together. Workers are joined with a bound on
every way out, then terminated, then killed; a worker whose parent is gone exits by itself (a watchdog thread).

Resuming: the best checkpoint (weights, ``best.json``) survives a crash; the next attempt starts from its weights
at the epoch after it. The model uploaded is that checkpoint (``model.pt``) plus ``shapes_net.json``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import pickle
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llnode.schema import Category, Detections, ModelInformation
from llnode.trainer.inprocess import InProcessTrainerLogic, TrainingHooks
from llnode.trainer.logic import BestState, CriticalError, TrainingInterrupted, TrainingRun

if TYPE_CHECKING:
    import torch

    from llnode.demo.shapes_net import NetConfig, Sample

logger = logging.getLogger('llnode.demo.trainer')

MODEL_FORMAT = 'shapes_torch'

#: the flag rank 0 shares with all ranks: nothing, a graceful stop, an abort
CONTINUE, STOP, ABORT = 0, 1, 2

#: how long the ranks wait for each other to start (process start and ``import torch`` included)
INIT_TIMEOUT = 120.0
#: how long a collective may wait for a slow or dead rank before it fails
COLLECTIVE_TIMEOUT = 120.0
#: how long rank 0 waits for workers that left the loop with it, then after terminating them
WORKER_JOIN_TIMEOUT = 10.0
WORKER_KILL_TIMEOUT = 5.0
#: how often a worker checks that the node process that started it still exists
WATCHDOG_INTERVAL = 0.5
#: images per forward pass in the detecting stage
DETECT_BATCH = 16


@dataclass(frozen=True)
class TrainOptions:
    """The hyper-parameters of a ShapesNet training (picklable: workers get them as they are)."""

    epochs: int = 30
    resolution: int = 128
    width: int = 32
    batch_size: int = 8
    learning_rate: float = 8e-3
    weight_decay: float = 1e-4
    warmup: float = 0.15  # fraction of the steps with a rising learning rate
    fliplr: float = 0.5
    threshold: float = 0.3
    seed: int = 0
    #: torch intra-op threads per rank; None: torch's default in one process, the cores shared out among ranks.
    #: One thread is slower on an idle machine (about 1.5x on 2 cores) but many times faster on a busy one.
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ('epochs', 'resolution', 'width', 'batch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f'threads must be None or a positive int, got {self.threads!r}')
        if self.resolution < 32 or self.resolution % 16:
            raise ValueError(f'resolution must be a multiple of 16, at least 32, got {self.resolution}')
        if not self.learning_rate > 0:
            raise ValueError(f'learning_rate must be > 0, got {self.learning_rate!r}')
        if not 0.0 <= self.fliplr <= 1.0 or not 0.0 <= self.warmup < 1.0:
            raise ValueError('fliplr must be in [0, 1] and warmup in [0, 1)')


@dataclass
class RankSpec:
    """What a rank needs to run the loop: the run's facts (no Loop connection), options, and where to resume."""

    options: TrainOptions
    world: int
    start_epoch: int
    threads: int | None  # intra-op threads of each rank (None: torch's default)
    categories: list[Category]
    image_data: list[dict[str, Any]]
    images_folder: Path
    training_folder: Path
    facts: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# The shared stop flag


class SyncedRun:
    """The run as the ranks' loop sees it: everything from the real run, but stop and abort from the flag last
    shared by rank 0, so that every rank raises ``TrainingInterrupted`` at the same batch end.

    On rank 0 ``real`` is the node's run (publishing and progress go to it); on workers it is a :class:`WorkerRun`.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self.flag = CONTINUE

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def local_flag(self) -> int:
        """This process's own view: what rank 0 shares."""
        if self._real.abort_requested:
            return ABORT
        return STOP if self._real.stop_requested else CONTINUE

    def update(self, flag: int) -> None:
        self.flag = max(self.flag, int(flag))  # once set, a stop or abort stays

    @property
    def stop_requested(self) -> bool:
        return self.flag == STOP

    @property
    def abort_requested(self) -> bool:
        return self.flag == ABORT

    def check_stop(self) -> None:
        if self.flag == ABORT:
            raise TrainingInterrupted(aborted=True)
        if self.flag == STOP:
            raise TrainingInterrupted(aborted=False)


class WorkerRun:
    """A worker rank's TrainingRun: the training's facts, no Loop (the callbacks that use it run on rank 0 only)."""

    def __init__(self, spec: RankSpec) -> None:
        facts = spec.facts
        self.organization: str = facts.get('organization', '')
        self.project: str = facts.get('project', '')
        self.training_number: int = facts.get('training_number', 0)
        self.model_variant: str = facts.get('model_variant', '')
        self.hyperparameters: dict[str, Any] = dict(facts.get('hyperparameters') or {})
        self.base_model_uuid: str | None = facts.get('base_model_uuid')
        self.categories = list(spec.categories)
        self.training_folder = spec.training_folder
        self.images_folder = spec.images_folder
        self.logger = logging.getLogger('llnode.demo.trainer.worker')
        self._image_data = spec.image_data
        self._stop = threading.Event()

    @property
    def image_data(self) -> list[dict[str, Any]]:
        return self._image_data

    @property
    def base_model_folder(self) -> Path | None:
        return None

    @property
    def node_uuid(self) -> str:
        return ''

    @property
    def node_name(self) -> str:
        return ''

    @property
    def stop_requested(self) -> bool:
        return False

    @property
    def abort_requested(self) -> bool:
        return False

    def check_stop(self) -> None:
        """Stop and abort come from rank 0 through :class:`SyncedRun`."""

    def wait_for_stop(self, timeout: float) -> bool:
        return self._stop.wait(max(0.0, timeout))

    def set_progress(self, fraction: float | None) -> None:
        """Progress is rank 0's to report."""

    def report_best(self, state: BestState) -> None:
        """Publishing is rank 0's."""


# ---------------------------------------------------------------------------------------------------------------
# The loop every rank runs


def learning_rate(options: TrainOptions, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak (a function of the step, so a resume continues it)."""
    warm = max(1, int(total * options.warmup))
    if step < warm:
        return options.learning_rate * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return options.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_loop(run: SyncedRun, hooks: TrainingHooks, spec: RankSpec, rank: int, net: torch.nn.Module) -> None:
    """Train ``net`` for the remaining epochs on this rank's share; every rank calls it the same way.

    ``net`` is the plain ShapesNet (with weights to resume from on rank 0); under torch.distributed it is wrapped
    in DDP here, which copies rank 0's weights to all ranks first.
    """
    import torch
    from torch.utils.data import DistributedSampler

    from llnode.demo import shapes_net

    options = spec.options
    world = spec.world
    config = shapes_net.NetConfig.for_categories(
        spec.categories, resolution=options.resolution, width=options.width, threshold=options.threshold
    )
    train = shapes_net.load_samples(spec.image_data, spec.images_folder, config, image_set='train')
    test = shapes_net.load_samples(spec.image_data, spec.images_folder, config, image_set='test')
    if not train:
        raise CriticalError('the training data has no images of set "train" to learn from')
    if not test:
        if rank == 0:
            run.logger.warning('no test images: the confusion matrix is measured on the training images')
        test = train
    distributed = world > 1
    model: torch.nn.Module = net
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(net)
    sampler: DistributedSampler[int] = DistributedSampler(
        train,  # type: ignore[arg-type]
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=options.seed,
    )
    per_rank_batch = max(1, options.batch_size // world)
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
    total_steps = steps_per_epoch * options.epochs
    optimizer = torch.optim.AdamW(net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    flag = torch.zeros(1, dtype=torch.int64)

    def share_flag() -> None:
        if not distributed:
            run.update(run.local_flag())
            return
        flag[0] = run.local_flag() if rank == 0 else CONTINUE
        torch.distributed.broadcast(flag, src=0)
        run.update(int(flag[0]))

    hooks.train_begin(model=model, epochs=options.epochs, batches=steps_per_epoch)
    if spec.start_epoch >= options.epochs:
        run.logger.info('the best checkpoint is from the last epoch already; nothing left to train')
        return
    for epoch in hooks.epochs(options.epochs, start=spec.start_epoch):
        sampler.set_epoch(epoch)
        order = list(sampler)
        flips = random.Random(f'{options.seed}:{epoch}:{rank}')
        batches = [order[i : i + per_rank_batch] for i in range(0, len(order), per_rank_batch)]
        model.train()
        for step, indices in enumerate(hooks.batches(batches)):
            chunk = [train[i] for i in indices]
            images, heat, geometry, mask = shapes_net.collate(
                chunk, flip=[flips.random() < options.fliplr for _ in chunk]
            )
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(options, epoch * steps_per_epoch + step, total_steps)
            loss = shapes_net.detection_loss(model(images), heat, geometry, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            hooks.log(loss=float(loss.detach()))
            share_flag()
        matrix = evaluate_share(net, test, config, run, rank=rank, world=world)
        hooks.log(confusion_matrix=matrix)


def evaluate_share(
    net: torch.nn.Module, test: Sequence[Sample], config: NetConfig, run: SyncedRun, *, rank: int, world: int
) -> dict[str, dict[str, int]]:
    """The confusion matrix on the test images: each rank scores every ``world``-th image and the counts are summed
    over the ranks (with rank 0's stop flag in the same all-reduce)."""
    import torch

    from llnode.demo import shapes_net

    share = list(test[rank::world])
    predictions = shapes_net.predict(net, share, config)
    matrix = shapes_net.confusion_matrix(predictions, [s.boxes for s in share], categories=config.category_ids)
    if world == 1:
        run.update(run.local_flag())
        return {key: matrix[key] for key in config.category_ids}
    counts = torch.tensor(
        [[matrix[key][name] for name in ('tp', 'fp', 'fn')] for key in config.category_ids] + [[0, 0, 0]],
        dtype=torch.int64,
    )
    counts[-1, 0] = run.local_flag() if rank == 0 else CONTINUE
    torch.distributed.all_reduce(counts)
    run.update(int(counts[-1, 0]))
    return {
        key: {'tp': int(row[0]), 'fp': int(row[1]), 'fn': int(row[2])}
        for key, row in zip(config.category_ids, counts[:-1].tolist(), strict=True)
    }


# ---------------------------------------------------------------------------------------------------------------
# Worker processes


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('127.0.0.1', 0))
        return int(probe.getsockname()[1])


def _init_group(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT),
    )


def _watch_parent(parent: int, done: threading.Event) -> None:
    """End this worker when the process that started it is gone (a killed node leaves no orphan)."""
    while not done.wait(WATCHDOG_INTERVAL):
        if os.getppid() != parent:
            os._exit(3)


def worker_main(spec: RankSpec, rank: int, port: int, parent: int) -> None:
    """A worker rank: join the group, run the loop until rank 0 ends it, leave."""
    done = threading.Event()
    watchdog = threading.Thread(target=_watch_parent, args=(parent, done), name=f'llnode-shapes-watchdog-{rank}')
    watchdog.daemon = True
    watchdog.start()
    try:
        import torch
        import torch.distributed as dist

        from llnode.demo import shapes_net

        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        _init_group(rank, spec.world, port)
        try:
            logic = ShapesTrainer(**{k: getattr(spec.options, k) for k in TrainOptions.__dataclass_fields__})
            run = SyncedRun(WorkerRun(spec))
            hooks = logic.make_hooks(run)
            config = shapes_net.NetConfig.for_categories(
                spec.categories, resolution=spec.options.resolution, width=spec.options.width
            )
            net = shapes_net.build_net(config, seed=spec.options.seed)
            with contextlib.suppress(TrainingInterrupted):
                run_loop(run, hooks, spec, rank, net)
        finally:
            dist.destroy_process_group()
    finally:
        done.set()
        watchdog.join(WATCHDOG_INTERVAL * 4)


def worker_entry() -> None:
    """The worker process's entry (``python -c``): rank, port and parent pid as arguments, the pickled
    :class:`RankSpec` on stdin.

    After a clean end the process leaves with ``os._exit(0)``, skipping the interpreter's teardown: there, now and
    then (1 in 15 runs on a loaded 2-core machine), torch's C++ teardown after ``destroy_process_group()`` aborted
    with "terminate called without an active exception" (SIGABRT, or a segfault), so a worker that had finished
    its work reported a crash. It has nothing left to write but its logs, which are flushed first.
    """
    rank, port, parent = (int(arg) for arg in sys.argv[1:4])
    spec = pickle.loads(sys.stdin.buffer.read())
    if not isinstance(spec, RankSpec):
        raise SystemExit(f'worker rank {rank}: expected a RankSpec on stdin, got {type(spec).__name__}')
    worker_main(spec, rank, port, parent)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


#: what a worker process runs; a fresh interpreter that imports only this module (not the node's main script)
WORKER_COMMAND = 'from llnode.demo.torch_trainer import worker_entry; worker_entry()'


class Workers:
    """The ``nproc - 1`` worker processes of one distributed training; ``close()`` ends them on every way out.

    Plain subprocesses rather than ``multiprocessing`` spawn: a spawned child re-imports the parent's main script,
    which fails in a script without a ``__main__`` guard; a fresh interpreter running :func:`worker_entry` does not.
    """

    def __init__(self, spec: RankSpec, port: int) -> None:
        payload = pickle.dumps(spec)
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            for rank in range(1, spec.world):
                process = subprocess.Popen(
                    [sys.executable, '-c', WORKER_COMMAND, str(rank), str(port), str(os.getpid())],
                    stdin=subprocess.PIPE,
                )
                self.processes.append(process)
                assert process.stdin is not None
                with process.stdin:
                    process.stdin.write(payload)
        except BaseException:
            self.close(0.0)
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def exit_codes(self) -> list[int | None]:
        """How each worker ended (0: it left the loop by itself; negative: the signal that ended it; None: running)."""
        return [p.poll() for p in self.processes]

    def close(self, grace: float) -> None:
        """Wait up to ``grace`` s for the workers to end by themselves, then terminate, then kill them."""
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        for process in self.processes:
            if process.poll() is None:
                logger.warning('worker pid %d did not end; terminating it', process.pid)
                process.terminate()
        for process in self.processes:
            try:
                process.wait(WORKER_KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(WORKER_KILL_TIMEOUT)


# ---------------------------------------------------------------------------------------------------------------
# The trainer logic


class ShapesTrainer(InProcessTrainerLogic):
    """Trains ShapesNet on the Loop's box annotations (format ``shapes_torch``) on CPU.

    ``epochs`` trains that many epochs (about 0.5 s each for the demo's 120 images on two idle cores; 30 epochs
    reach F1 ~0.98 on its test split); ``nproc > 1`` runs the loop on that many ranks under torch.distributed
    (gloo). Other keywords are :class:`TrainOptions` (``threads``, ``resolution``, ``batch_size``, ...).
    """

    model_format = MODEL_FORMAT
    architecture = 'shapes_net_v1'
    config_name = 'shapes_net.json'

    def __init__(self, epochs: int = 30, nproc: int = 1, **options: Any) -> None:
        super().__init__()
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise ValueError(f'nproc must be a positive int, got {nproc!r}')
        self.options = TrainOptions(epochs=epochs, **options)
        self.nproc = nproc
        # the worker processes of the current or last distributed training, and how they ended (None: running)
        self.worker_pids: list[int] = []
        self.worker_exit_codes: list[int | None] = []

    # ------------------------------------------------------------------ training

    def config_path(self, run: TrainingRun) -> Path:
        """``shapes_net.json`` beside the best checkpoint."""
        return self.checkpoint_path(run).with_name(self.config_name)

    def net_config(self, run: TrainingRun) -> NetConfig:
        from llnode.demo import shapes_net

        return shapes_net.NetConfig.for_categories(
            run.categories,
            resolution=self.options.resolution,
            width=self.options.width,
            threshold=self.options.threshold,
        )

    def make_hooks(self, run: TrainingRun) -> TrainingHooks:
        """The driver sees the run through :class:`SyncedRun` (stop and abort from the shared flag)."""
        synced = run if isinstance(run, SyncedRun) else SyncedRun(run)
        return TrainingHooks(synced, [*self.library_callbacks(run), *self.callbacks(run)])

    def _start_epoch(self, run: TrainingRun) -> int:
        """The epoch after the best checkpoint's, when an earlier attempt left one (else 0)."""
        info = self.checkpoint_path(run).with_name('best.json')
        if not (self.checkpoint_path(run).is_file() and info.is_file()):
            return 0
        try:
            epoch = json.loads(info.read_text()).get('epoch')
        except (OSError, ValueError, AttributeError):
            return 0
        return epoch + 1 if isinstance(epoch, int) and epoch >= 0 else 0

    def fit(self, run: TrainingRun, hooks: TrainingHooks) -> None:
        import torch

        from llnode.demo import shapes_net

        synced = hooks.run if isinstance(hooks.run, SyncedRun) else SyncedRun(run)
        try:
            config = self.net_config(run)
        except shapes_net.NetError as error:  # e.g. no box category: no attempt can do better
            raise CriticalError(f'cannot train a ShapesNet for this training: {error}') from None
        self.config_path(run).parent.mkdir(parents=True, exist_ok=True)
        config.save(self.config_path(run))
        net = shapes_net.build_net(config, seed=self.options.seed)
        start = self._start_epoch(run)
        if start:
            try:
                net.load_state_dict(torch.load(self.checkpoint_path(run), map_location='cpu', weights_only=True))
                run.logger.info('resuming from the best checkpoint of epoch %d', start - 1)
            except (RuntimeError, OSError, ValueError, EOFError) as error:
                run.logger.warning('the best checkpoint is unusable (%s); training from scratch', error)
                start = 0
        spec = RankSpec(
            options=self.options,
            world=self.nproc,
            start_epoch=start,
            threads=self._threads(),
            categories=list(run.categories),
            image_data=list(run.image_data),
            images_folder=Path(run.images_folder),
            training_folder=Path(run.training_folder),
            facts={
                'organization': run.organization,
                'project': run.project,
                'training_number': run.training_number,
                'model_variant': run.model_variant,
                'hyperparameters': dict(run.hyperparameters or {}),
                'base_model_uuid': run.base_model_uuid,
            },
        )
        previous = torch.get_num_threads()
        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        try:
            if self.nproc == 1:
                run_loop(synced, hooks, spec, 0, net)
            else:
                self._fit_distributed(synced, hooks, spec, net)
        finally:
            if spec.threads is not None:
                torch.set_num_threads(previous)

    def _threads(self) -> int | None:
        if self.options.threads is not None:
            return self.options.threads
        return None if self.nproc == 1 else max(1, (os.cpu_count() or 1) // self.nproc)

    def _fit_distributed(self, run: SyncedRun, hooks: TrainingHooks, spec: RankSpec, net: torch.nn.Module) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError('torch.distributed is not available in this torch build')
        if dist.is_initialized():
            raise RuntimeError('a torch.distributed process group exists in this process already')
        port = free_port()
        workers = Workers(spec, port)
        self.worker_pids = workers.pids
        grace = 0.0
        try:
            _init_group(0, spec.world, port)
            try:
                run_loop(run, hooks, spec, 0, net)
                grace = WORKER_JOIN_TIMEOUT
            except TrainingInterrupted:
                grace = WORKER_JOIN_TIMEOUT  # every rank left at the same batch end
                raise
            finally:
                workers.close(grace)
                dist.destroy_process_group()
        finally:
            workers.close(0.0)  # the group never formed: the workers go now
            self.worker_exit_codes = workers.exit_codes()

    # ------------------------------------------------------------------ the model

    def model_files(self, run: TrainingRun) -> list[Path]:
        """The best checkpoint (``model.pt``) and ``shapes_net.json``."""
        weights = super().model_files(run)
        config = self.config_path(run)
        if not config.is_file():
            self.net_config(run).save(config)
        return [*weights, config]

    def model_metadata(self, run: TrainingRun) -> dict[str, Any]:
        return {'resolution': self.options.resolution}

    def detect(
        self, run: TrainingRun, model_info: ModelInformation, model_folder: Path, image_paths: Sequence[Path]
    ) -> list[Detections]:
        """Box detections of the uploaded model for each image, with the detector's own logic on CPU."""
        from llnode.demo import shapes_net
        from llnode.demo.torch_detector import ShapesDetectorLogic

        logic = ShapesDetectorLogic(model_info, device='cpu', model_folder=model_folder)
        try:
            results = []
            for start in range(0, len(image_paths), DETECT_BATCH):
                run.check_stop()
                chunk = image_paths[start : start + DETECT_BATCH]
                images = logic.batch_evaluate([shapes_net.read_rgb(path) for path in chunk])
                results += [
                    Detections(box_detections=metadata.box_detections, image_id=path.stem)
                    for metadata, path in zip(images, chunk, strict=True)
                ]
            return results
        finally:
            logic.close()
