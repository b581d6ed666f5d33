"""The trainer of the trainer guide: learns how large each box category is, and predicts a box of that size."""

import json
import logging
import os
import sys

from llnode.schema import BoxDetection, Detections
from llnode.trainer import ConfusionCounter, InProcessTrainerLogic, TrainerNode


def save_json(model, handle):
    """How a model is written to its checkpoint file (the default would be torch.save of a state_dict)."""
    handle.write(json.dumps(model).encode())


class MeanBoxTrainer(InProcessTrainerLogic):
    """A toy model: per box category, how often it shows up in an image and its mean width and height."""

    model_format = 'mean_box'
    checkpoint_name = 'mean_box.json'  # the checkpoint file, uploaded as the model

    def __init__(self):
        super().__init__(save_checkpoint=save_json)

    def fit(self, run, hooks):
        boxes = [c.id for c in run.categories if c.type == 'box']
        train = [item for item in run.image_data if item['set'] == 'train']
        test = [item for item in run.image_data if item['set'] == 'test']
        model = {}
        hooks.train_begin(model=model)  # the library saves this object as the best checkpoint
        for _epoch in hooks.epochs(3):
            sums = {c: [0, 0, 0] for c in boxes}  # images, width, height
            for item in hooks.batches(train):  # stop and abort requests arrive between two batches
                for box in item['box_annotations']:
                    if box['category_id'] in sums:
                        sums[box['category_id']][0] += 1
                        sums[box['category_id']][1] += box['width']
                        sums[box['category_id']][2] += box['height']
            model.clear()
            for category, (count, width, height) in sums.items():
                if count:
                    model[category] = {'share': count / len(train), 'width': width / count, 'height': height / count}
            hooks.log(confusion_matrix=evaluate(model, test))  # published to the Loop when it is a new best

    def detect(self, run, model_info, model_folder, image_paths):
        model = json.loads((model_folder / 'mean_box.json').read_text())
        names = {c.id: c.name for c in model_info.categories}
        detections = []
        for path in image_paths:
            found = Detections(image_id=path.stem)
            for category, box in model.items():
                if box['share'] >= 0.5 and category in names:
                    width, height = int(box['width']), int(box['height'])
                    found.box_detections.append(
                        BoxDetection(names[category], 0, 0, width, height, model_info.version, box['share'], category)
                    )
            detections.append(found)
        return detections


def evaluate(model, items):
    """tp/fp/fn per category uuid, counting only whether a category is in an image."""
    counter = ConfusionCounter(model)
    predicted = [category for category, box in model.items() if box['share'] >= 0.5]
    for item in items:
        counter.add_image(predicted, [box['category_id'] for box in item['box_annotations']])
    return counter.as_dict()


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    node = TrainerNode('mean box trainer', MeanBoxTrainer())
    sys.exit(node.serve(host='127.0.0.1', port=int(os.environ.get('PORT', '8005'))))
