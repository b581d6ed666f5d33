"""Settings: environment variables of the protocol, alias rule, scheme rule, data folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from llnode.config import ConfigError, Settings


def test_defaults_match_the_protocol_table() -> None:
    s = Settings.from_env({})
    assert (s.host, s.username, s.password, s.organization, s.project) == ('learning-loop.ai', '', '', '', '')
    assert s.data_folder == Path('/data')
    assert (s.sync_cycles, s.inference_batch_size, s.max_outbox_size) == (6, 10, 1000)
    assert (s.min_uncertain_threshold, s.max_uncertain_threshold) == (0.3, 0.6)
    assert s.version_control_default == 'follow_loop'
    assert not (s.skip_repeat_on_start or s.use_backdoor_controls or s.exclusive_model_build)
    assert not (s.restart_after_training or s.keep_old_trainings)
    assert s.trainer_idle_timeout_sec == 0.0
    assert s.ssl_cert_path == '' and s.node_version is None


def test_every_variable_is_read() -> None:
    env = {
        'LOOP_HOST': 'loop.local:8080',
        'LOOP_USERNAME': 'u',
        'LOOP_PASSWORD': 'p',
        'LOOP_ORGANIZATION': 'org',
        'LOOP_PROJECT': 'proj',
        'LOOP_SSL_CERT_PATH': '/ca.pem',
        'DATA_FOLDER': '/tmp/d',
        'SKIP_REPEAT_ON_START': 'True',
        'USE_BACKDOOR_CONTROLS': 'TRUE',
        'SYNC_CYCLES': '2',
        'VERSION_CONTROL_DEFAULT': 'PAUSE',
        'EXCLUSIVE_MODEL_BUILD': '1',
        'MIN_UNCERTAIN_THRESHOLD': '0.1',
        'MAX_UNCERTAIN_THRESHOLD': '0.9',
        'INFERENCE_BATCH_SIZE': '4',
        'RESTART_AFTER_TRAINING': 'true',
        'KEEP_OLD_TRAININGS': '1',
        'TRAINER_IDLE_TIMEOUT_SEC': '2.5',
        'MAX_OUTBOX_SIZE': '50',
        'NODE_VERSION': '1.2.3',
    }
    s = Settings.from_env(env)
    assert (s.host, s.username, s.password, s.organization, s.project) == ('loop.local:8080', 'u', 'p', 'org', 'proj')
    assert s.ssl_cert_path == '/ca.pem' and s.data_folder == Path('/tmp/d')
    assert s.skip_repeat_on_start and s.use_backdoor_controls and s.exclusive_model_build
    assert s.restart_after_training and s.keep_old_trainings
    assert (s.sync_cycles, s.inference_batch_size, s.max_outbox_size) == (2, 4, 50)
    assert (s.min_uncertain_threshold, s.max_uncertain_threshold, s.trainer_idle_timeout_sec) == (0.1, 0.9, 2.5)
    assert s.version_control_default == 'pause' and s.node_version == '1.2.3'


def test_generic_alias_is_used_when_alone() -> None:
    s = Settings.from_env({'HOST': 'h:1', 'USERNAME': 'bob', 'PASSWORD': 'pw', 'ORGANIZATION': 'o', 'PROJECT': 'p'})
    assert (s.host, s.username, s.password, s.organization, s.project) == ('h:1', 'bob', 'pw', 'o', 'p')


def test_conflicting_aliases_loop_name_wins_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger='llnode.config'):
        s = Settings.from_env({'USERNAME': 'bob', 'LOOP_USERNAME': 'alice', 'LOOP_HOST': 'a:1', 'HOST': 'a:1'})
    assert s.username == 'alice'  # the reference v0.20.1 sent '' here (§1.2); 0.27 and llnode take LOOP_USERNAME
    assert s.host == 'a:1'
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # equal values are no conflict
    assert "LOOP_USERNAME='alice'" in warnings[0] and "using LOOP_USERNAME='alice'" in warnings[0]


def test_empty_values_count_as_unset() -> None:
    assert Settings.from_env({'LOOP_HOST': '', 'HOST': 'h'}).host == 'h'
    assert Settings.from_env({'SYNC_CYCLES': ''}).sync_cycles == 6


def test_code_overrides_the_environment() -> None:
    s = Settings.from_env({'LOOP_HOST': 'env:1', 'SYNC_CYCLES': '3'}, host='code:2')
    assert (s.host, s.sync_cycles) == ('code:2', 3)
    assert Settings(host='direct:3', organization='o', project='p').project_path == '/o/projects/p'


def test_settings_in_code_do_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('LOOP_HOST', 'from-env:1')
    assert Settings().host == 'learning-loop.ai'
    assert Settings.from_env().host == 'from-env:1'


@pytest.mark.parametrize(
    ('host', 'base', 'socket'),
    [
        ('learning-loop.ai', 'https://learning-loop.ai', 'wss://learning-loop.ai'),
        ('preview.learning-loop.ai', 'https://preview.learning-loop.ai', 'wss://preview.learning-loop.ai'),
        ('127.0.0.1:8000', 'http://127.0.0.1:8000', 'ws://127.0.0.1:8000'),
        ('https://loop.example', 'https://loop.example', 'wss://loop.example'),
        ('https://loop.example:8443/', 'https://loop.example:8443', 'wss://loop.example:8443'),
        ('http://my.learning-loop.ai', 'http://my.learning-loop.ai', 'ws://my.learning-loop.ai'),
    ],
)
def test_scheme_rule(host: str, base: str, socket: str) -> None:
    s = Settings(host=host)
    assert (s.base_url, s.socket_url) == (base, socket)


@pytest.mark.parametrize(
    ('env', 'named'),
    [
        ({'SYNC_CYCLES': 'six'}, 'SYNC_CYCLES'),
        ({'SYNC_CYCLES': '0'}, 'SYNC_CYCLES'),
        ({'MAX_OUTBOX_SIZE': '-1'}, 'MAX_OUTBOX_SIZE'),
        ({'MIN_UNCERTAIN_THRESHOLD': 'low'}, 'MIN_UNCERTAIN_THRESHOLD'),
        ({'MIN_UNCERTAIN_THRESHOLD': '0.9'}, 'MIN_UNCERTAIN_THRESHOLD'),
        ({'USE_BACKDOOR_CONTROLS': 'maybe'}, 'USE_BACKDOOR_CONTROLS'),
        ({'TRAINER_IDLE_TIMEOUT_SEC': 'soon'}, 'TRAINER_IDLE_TIMEOUT_SEC'),
        ({'LOOP_HOST': 'ftp://x'}, 'LOOP_HOST'),
    ],
)
def test_bad_values_are_clear_errors_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_project_path_needs_organization_and_project() -> None:
    with pytest.raises(ConfigError, match='LOOP_ORGANIZATION and LOOP_PROJECT'):
        _ = Settings().project_path


def test_data_folder_is_created(tmp_path: Path) -> None:
    s = Settings.from_env({'DATA_FOLDER': str(tmp_path / 'a' / 'b')})
    assert s.ensure_data_folder() == tmp_path / 'a' / 'b'
    assert (tmp_path / 'a' / 'b').is_dir()


def test_data_folder_that_cannot_be_created_names_the_variable(tmp_path: Path) -> None:
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(ConfigError, match=r'DATA_FOLDER=.*cannot be created'):
        Settings.from_env({'DATA_FOLDER': str(blocker / 'sub')}).ensure_data_folder()
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match='DATA_FOLDER'):
            Settings(data_folder=locked / 'sub').ensure_data_folder()


@pytest.mark.parametrize(('raw', 'mode'), [('pause', 'pause'), ('PAUSE', 'pause'), ('Follow_Loop', 'follow_loop')])
def test_version_control_default_accepts_the_references_values(raw: str, mode: str) -> None:
    assert Settings.from_env({'VERSION_CONTROL_DEFAULT': raw}).version_control_default == mode


@pytest.mark.parametrize('raw', ['frozen', 'paused', 'follow'])
def test_version_control_default_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ConfigError, match=rf'VERSION_CONTROL_DEFAULT={raw!r} .*pause, follow_loop'):
        Settings.from_env({'VERSION_CONTROL_DEFAULT': raw})
    with pytest.raises(ConfigError, match='VERSION_CONTROL_DEFAULT'):
        Settings(version_control_default=raw)


def test_conflicting_passwords_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    env = {'LOOP_PASSWORD': 'secret-one', 'PASSWORD': 'secret-two', 'LOOP_HOST': 'a:1', 'HOST': 'b:2'}
    with caplog.at_level(logging.DEBUG, logger='llnode'):
        settings = Settings.from_env(env)
    assert settings.password == 'secret-one'
    text = caplog.text
    assert 'LOOP_PASSWORD' in text and 'PASSWORD' in text  # the conflict is still reported
    assert 'secret-one' not in text and 'secret-two' not in text
    assert "'a:1'" in text  # values that are no secret are still named
    assert 'secret-one' not in repr(settings) and 'secret-one' not in str(settings)
