"""The converter of the converter guide: turns ``mocked`` models into ``mocked_upper`` ones (upper-case text)."""

import logging
import os
import sys

from llnode.converter import ConverterLogic, ConverterNode


class UpperCaseConverter(ConverterLogic):
    """A stand-in for a real export (ONNX, TensorRT): writes every text file of the model in upper case."""

    def convert(self, model_folder, out_folder):
        results = []
        for source in sorted(model_folder.glob('*.txt')):
            target = out_folder / source.name
            target.write_text(source.read_text().upper())
            results.append(target)
        return results  # model.json is not among them: the node writes it from the source model's


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    node = ConverterNode('upper-case converter', UpperCaseConverter('mocked', 'mocked_upper'))
    sys.exit(node.serve(host='127.0.0.1', port=int(os.environ.get('PORT', '8006'))))
