"""The training script the YOLO-style trainer node runs as a subprocess (the sample's ``train.py``).

It is what a node author's own training script looks like under llnode: it knows nothing of the Loop. It reads
``dataset.json`` (see ``yolo_format.py``) and ``hyp.json``, caps its GPU memory to ``--vram-limit-gb``, settles its
batch size with the toolkit (:func:`llnode.trainer.cuda.measure_batch_size`: probed on a GPU, the documented
fallback on CPU), trains, and after each epoch

- scores the validation split (the toolkit's ``post_process`` and ``macro_f1``),
- prints one epoch line (``training_log.py``) that the node parses for its progress and metrics,
- writes ``result/weights/epoch{N}.pt`` + ``.json`` when the epoch is the best so far, and ``last.pt`` to resume.

Run by hand: ``python train.py --data T/dataset.json --hyp T/hyp.json --project T``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import model_files
import network
import torch
from training_log import BATCH_SIZE_LINE, EpochLine

from llnode.demo import shapes_net
from llnode.demo.shapes_net import NetConfig, Sample, ShapesNet
from llnode.demo.torch_trainer import TrainOptions, learning_rate
from llnode.detector.postprocess import post_process
from llnode.detector.torch_logic import choose_device
from llnode.durable import write_json
from llnode.trainer.batch_size import requested_batch_size
from llnode.trainer.cuda import ProbeStep, add_vram_limit_argument, limit_cuda_memory, measure_batch_size
from llnode.trainer.metrics import macro_f1

logger = logging.getLogger('yolo_style.train')

#: the hyperparameters train.py needs in hyp.json (the sample's hyp.json has them all)
REQUIRED = (
    'epochs',
    'resolution',
    'learning_rate',
    'weight_decay',
    'fliplr',
    'seed',
    'detect_nms_conf_thres',
    'detect_nms_iou_thres',
)
#: images per forward pass when scoring the validation split
EVAL_BATCH = 16


def load_samples(entries: Sequence[Mapping[str, Any]], config: NetConfig) -> list[Sample]:
    """The images of a split of ``dataset.json``, resized once, with their training targets."""
    samples = []
    for entry in entries:
        rgb = shapes_net.read_rgb(Path(entry['image']))
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        boxes = network.yolo_labels_to_boxes(entry['labels'], width, height, config.category_ids)
        heat, geometry, mask = shapes_net.encode_targets(boxes, width, height, config)
        image = shapes_net.image_tensor(rgb, config.resolution)
        samples.append(Sample(str(entry['id']), image, width, height, boxes, heat, geometry, mask))
    return samples


class TrainingStep(ProbeStep):
    """One trial of the batch-size probe: a training step and a validation pass on a copy of the network (the
    probe's optimizer steps must not touch the weights that are trained afterwards)."""

    def __init__(self, net: ShapesNet, samples: Sequence[Sample], device: torch.device) -> None:
        self.net = copy.deepcopy(net).to(device).train()
        self.samples = list(samples)
        self.device = device
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-4)

    def _batch(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        chosen = [self.samples[i % len(self.samples)] for i in range(batch_size)]
        return tuple(t.to(self.device) for t in shapes_net.collate(chosen))

    def train_step(self, batch_size: int) -> str | None:
        images, heat, geometry, mask = self._batch(batch_size)
        loss = shapes_net.detection_loss(self.net(images), heat, geometry, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return None

    def val_step(self, batch_size: int) -> str | None:
        images = self._batch(batch_size)[0]
        with torch.inference_mode():
            self.net(images)
        return None

    def on_out_of_memory(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def release(self) -> None:
        del self.net, self.optimizer


def score(
    net: ShapesNet, samples: Sequence[Sample], device: torch.device, *, conf: float, iou: float
) -> dict[str, dict[str, int]]:
    """The confusion matrix ``{category_id: {tp, fp, fn}}`` on ``samples``, through the detector's own path:
    raw boxes, then ``post_process`` (strict threshold, per-class NMS, clipping)."""
    config = net.config
    predictions: list[list[dict[str, Any]]] = []
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(samples), EVAL_BATCH):
                chunk = samples[start : start + EVAL_BATCH]
                outputs = net(torch.stack([s.image for s in chunk]).to(device)).float().cpu()
                sizes = [(s.width, s.height) for s in chunk]
                for (boxes, scores, labels), sample in zip(
                    network.raw_boxes(outputs, sizes, config.resolution, conf_floor=conf), chunk, strict=True
                ):
                    kept = post_process(
                        boxes,
                        scores,
                        labels,
                        conf_threshold=conf,
                        iou_threshold=iou,
                        origin_h=sample.height,
                        origin_w=sample.width,
                    )
                    predictions.append(
                        [
                            {
                                'category_id': config.category_ids[p.category_index],
                                'x': p.x,
                                'y': p.y,
                                'width': p.width,
                                'height': p.height,
                                'confidence': p.confidence,
                            }
                            for p in kept
                        ]
                    )
    finally:
        net.train(was_training)
    truths = [s.boxes for s in samples]
    return shapes_net.confusion_matrix(predictions, truths, categories=config.category_ids)


def train(args: argparse.Namespace) -> None:
    dataset = network.read_json_object(args.data)
    hyp = network.read_json_object(args.hyp)
    missing = [key for key in REQUIRED if key not in hyp]
    if missing:
        raise SystemExit(
            f"error: {args.hyp} lacks {', '.join(missing)} (the node writes it from the sample's hyp.json)"
        )
    limit_cuda_memory(float(args.vram_limit_gb))
    device = choose_device(args.device)
    torch.manual_seed(int(hyp['seed']))
    config = network.net_config(dataset['category_ids'], dataset['names'], int(hyp['resolution']))
    train_samples = load_samples(dataset['train'], config)
    val_samples = load_samples(dataset['val'], config)
    print(f'{len(train_samples)} training images, {len(val_samples)} validation images, device {device}', flush=True)

    folder = model_files.weights_folder(args.project)
    last = folder / model_files.LAST_CHECKPOINT
    net = shapes_net.build_net(config, seed=int(hyp['seed']))
    start_epoch, best_f1 = 0, -1.0
    resumed: dict[str, Any] | None = None
    if args.resume:
        net, resumed = network.load_checkpoint(last)
        start_epoch, best_f1 = int(resumed['epoch']), float(resumed.get('best_f1', -1.0))
        print(f'resuming after epoch {start_epoch}', flush=True)
    elif args.weights is not None:
        base, _ = network.load_checkpoint(args.weights)
        if base.config.category_ids == config.category_ids and base.config.resolution == config.resolution:
            net.load_state_dict(base.state_dict())
            print(f'starting from {args.weights}', flush=True)
        else:
            print(
                f'the weights in {args.weights} are for other categories or another resolution; training from scratch'
            )
    net = net.to(device).train()

    batch_size = measure_batch_size(
        lambda: TrainingStep(net, train_samples, device),
        max_batch_size=requested_batch_size(hyp),
        sample_count=len(train_samples),
        probe='training',
    )
    print(BATCH_SIZE_LINE.format(batch_size=batch_size, how=device.type), flush=True)

    epochs = int(hyp['epochs'])
    options = TrainOptions(
        epochs=epochs,
        resolution=config.resolution,
        batch_size=batch_size,
        learning_rate=float(hyp['learning_rate']),
        weight_decay=float(hyp['weight_decay']),
        fliplr=float(hyp['fliplr']),
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    if resumed is not None and 'optimizer' in resumed:
        optimizer.load_state_dict(resumed['optimizer'])
    steps = (len(train_samples) + batch_size - 1) // batch_size
    for epoch in range(start_epoch, epochs):
        order = list(range(len(train_samples)))
        shuffle = random.Random(f'{hyp["seed"]}:{epoch}')
        shuffle.shuffle(order)
        losses = []
        for step in range(steps):
            chunk = [train_samples[i] for i in order[step * batch_size : (step + 1) * batch_size]]
            images, heat, geometry, mask = (
                t.to(device) for t in shapes_net.collate(chunk, flip=[shuffle.random() < options.fliplr for _ in chunk])
            )
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(options, epoch * steps + step, epochs * steps)
            loss = shapes_net.detection_loss(net(images), heat, geometry, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        matrix = score(
            net,
            val_samples,
            device,
            conf=float(hyp['detect_nms_conf_thres']),
            iou=float(hyp['detect_nms_iou_thres']),
        )
        f1 = macro_f1(matrix)
        number = epoch + 1
        metrics = {'loss': sum(losses) / max(1, len(losses)), 'val_f1': f1, 'batch': float(batch_size)}
        print(EpochLine(number, epochs, metrics).format(), flush=True)
        if f1 > best_f1:
            best_f1 = f1
            weights = network.save_checkpoint(net, folder / f'epoch{number}.pt', epoch=number)
            write_json(weights.with_suffix('.json'), matrix)  # written last: the pair is complete
        network.save_checkpoint(net, last, epoch=number, optimizer=optimizer.state_dict(), best_f1=best_f1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or '').split('\n\n')[0])
    parser.add_argument('--data', type=Path, required=True, help='dataset.json (see yolo_format.py)')
    parser.add_argument('--hyp', type=Path, required=True, help='hyp.json: the hyperparameters')
    parser.add_argument('--project', type=Path, required=True, help='the training folder (weights go to result/)')
    parser.add_argument('--weights', type=Path, default=None, help='start from these weights (a base model)')
    parser.add_argument('--resume', action='store_true', help='resume from result/weights/last.pt')
    parser.add_argument('--device', default='auto', help='torch device: auto (CUDA when there is one), cpu, cuda:0')
    add_vram_limit_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s', stream=sys.stdout)
    train(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
