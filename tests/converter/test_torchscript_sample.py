"""``samples/torchscript_converter.py``: torch weights (``torch_state_dict``) to TorchScript (``torchscript``) against
the local Loop, in-process with a broken model beside two good ones, and the script as a real process."""

from __future__ import annotations

import io
import json
import signal
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from llnode.converter import ConverterNode, ModelFailure
from llnode.localloop import LocalLoop
from tests.converter.conftest import ORGANIZATION, PROJECT, converter_status, formats, upload_new_model
from tests.polling import wait_for
from tests.samples import load_sample, sample_process

torch = pytest.importorskip('torch')

#: Recent torch releases mark TorchScript deprecated; it still works (the sample's own process hides the warning).
pytestmark = pytest.mark.filterwarnings(r'ignore:.*torch\.jit.* is deprecated:DeprecationWarning')


sample = load_sample('torchscript_converter.py')
SOURCE, TARGET = sample.SOURCE_FORMAT, sample.TARGET_FORMAT


def weights(seed: int, classes: int = 4) -> tuple[object, bytes]:
    """A TinyClassifier with seeded random weights, and its state_dict as ``torch.save`` writes it."""
    torch.manual_seed(seed)
    module = sample.TinyClassifier(classes=classes).eval()
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return module, buffer.getvalue()


def download_scripted(loop: LocalLoop, model_id: str) -> object:
    """The converted model as a client gets it: ``GET …/models/{id}/torchscript/file``, loaded with torch.jit."""
    response = requests.get(
        f'{loop.url}/api/{ORGANIZATION}/projects/{PROJECT}/models/{model_id}/{TARGET}/file', timeout=10
    )
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ['model.json', sample.SCRIPTED]
        return torch.jit.load(io.BytesIO(archive.read(sample.SCRIPTED)), map_location='cpu')


class CountingConverter(sample.TorchScriptConverter):  # type: ignore[misc]
    """The sample's logic, noting which model each conversion was for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def convert(self, model_folder: Path, out_folder: Path) -> list[Path]:
        self.calls.append(json.loads((model_folder / 'model.json').read_text())['id'])
        result: list[Path] = super().convert(model_folder, out_folder)
        return result


def test_two_models_become_torchscript_that_computes_the_same_and_a_broken_one_is_given_up(
    local_loop: LocalLoop, make_converter: Callable[..., ConverterNode]
) -> None:
    originals = {}
    for seed, classes in ((1, 4), (2, 6)):
        module, data = weights(seed, classes)
        originals[upload_new_model(local_loop, SOURCE, {sample.WEIGHTS: data})] = module
    broken = upload_new_model(local_loop, SOURCE, {sample.WEIGHTS: b'these are not torch weights'})

    logic = CountingConverter()
    node = make_converter(local_loop, logic, max_attempts=2, retry_delay=0.2)

    wait_for(lambda: all(TARGET in formats(local_loop, m) for m in originals), timeout=20, what='both conversions')
    probe = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    for model_id, module in originals.items():
        scripted = download_scripted(local_loop, model_id)
        with torch.no_grad():
            expected, got = module(probe), scripted(probe)
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-6)

    def given_up() -> ModelFailure | None:
        record = node.failures().get(broken)
        return record if record is not None and record.given_up else None

    record = wait_for(given_up, timeout=10, what='the broken model to be given up')
    assert record.attempts == 2 and 'cannot be read by torch.load' in record.error
    assert record.attempted_at[1] - record.attempted_at[0] >= 0.2 * 0.7  # 0.2 s less up to 25 % jitter
    cycles = node.worker.cycles
    wait_for(lambda: node.worker.cycles >= cycles + 5, what='more cycles after giving up')
    assert logic.calls.count(broken) == 2  # spaced attempts, then never again, while the worker kept listing
    assert sorted(logic.calls) == sorted([*originals, broken, broken])
    assert formats(local_loop, broken) == [SOURCE]
    wait_for(lambda: sorted(node.converted) == sorted(originals), what='the node to count both conversions')
    status = wait_for(
        lambda: (s := converter_status(local_loop, node)) and broken in s['errors'] and s, what='the status'
    )
    assert status['capabilities'] == [f'{SOURCE}->{TARGET}'] and status['state'] == 'idle'


def test_the_sample_script_converts_a_model_and_reports_to_the_loop(local_loop: LocalLoop, tmp_path: Path) -> None:
    module, data = weights(3)
    model_id = upload_new_model(local_loop, SOURCE, {sample.WEIGHTS: data})
    with sample_process(
        'torchscript_converter.py', local_loop, tmp_path / 'converter-data', '--check-interval', '0.2'
    ) as process:
        wait_for(lambda: TARGET in formats(local_loop, model_id), timeout=30, what='the conversion', interval=0.05)
        record = wait_for(
            lambda: next((n for n in local_loop.nodes() if n['node_type'] == 'converter' and n['status']), None),
            timeout=30,
            what='the converter status',
        )
        assert record['status']['name'] == 'torchscript converter'
        ready = requests.get(f'{process.url}/readyz', timeout=5)
        assert ready.status_code == 200, ready.text
        probe = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            assert torch.allclose(download_scripted(local_loop, model_id)(probe), module(probe), atol=1e-6)
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=20) == 0
    assert 'Traceback' not in process.text(), process.text()
    assert not list((tmp_path / 'converter-data').rglob('*.pt'))  # work folders are cleaned after the upload
