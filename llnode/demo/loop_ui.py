"""The demo's hands and eyes on the local Loop: what a person does in the Loop's web UI, over HTTP.

Why over HTTP and not through the ``LocalLoop`` object: the demo should do exactly what a person (or a script
driving ``llnode control``) can do against any running local Loop: log in, start a training on a connected
trainer, watch the trainer's status and training updates, set the deployment target, look at the images that came
in and annotate them. Every route is the local Loop's control API (``/control``) or its REST API (``/api``).
"""

from __future__ import annotations

import logging
from typing import Any

import requests

logger = logging.getLogger('llnode.demo.loop_ui')

#: seconds one call may wait for the Loop (a begin_training waits for the trainer's ack: up to 20 s)
CALL_TIMEOUT = 30.0


class LoopUIError(RuntimeError):
    """The Loop answered a UI call with an error, or not at all; the message says which call and why."""


class LoopUI:
    """A logged-in session with a local Loop's control API for one project (``organization/project``)."""

    def __init__(self, url: str, username: str, password: str, organization: str, project: str) -> None:
        self.url = url.rstrip('/')
        self.organization = organization
        self.project = project
        self._credentials = {'username': username, 'password': password}
        self._session = requests.Session()
        self._logged_in = False

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> LoopUI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self) -> None:
        try:
            response = self._session.post(f'{self.url}/api/login', data=self._credentials, timeout=CALL_TIMEOUT)
        except requests.RequestException as e:
            raise LoopUIError(f'no answer from the Loop at {self.url}: {e}') from e
        if response.status_code != 200:
            raise LoopUIError(f'login as {self._credentials["username"]!r} failed: {response.status_code}')
        self._logged_in = True

    def _send(self, method: str, path: str, body: Any = None, *, timeout: float = CALL_TIMEOUT) -> requests.Response:
        if not self._logged_in:
            self.login()
        try:
            response = self._session.request(method, f'{self.url}{path}', json=body, timeout=timeout)
        except requests.RequestException as e:
            raise LoopUIError(f'{method} {path}: no answer from the Loop: {e}') from e
        if not response.ok:
            try:
                detail = response.json().get('detail')
            except (ValueError, AttributeError):
                detail = response.text[:200]
            raise LoopUIError(f'{method} {path} -> {response.status_code}: {detail}')
        return response

    def _json(self, method: str, path: str, body: Any = None, *, timeout: float = CALL_TIMEOUT) -> Any:
        response = self._send(method, path, body, timeout=timeout)
        try:
            return response.json()
        except ValueError as e:
            raise LoopUIError(f'{method} {path}: the answer is not JSON') from e

    @property
    def _project_path(self) -> str:
        return f'/control/projects/{self.organization}/{self.project}'

    # ------------------------------------------------------------------ nodes and trainings

    def nodes(self) -> list[dict[str, Any]]:
        """Every node with its last status and whether it is connected now."""
        return list(self._json('GET', '/control/nodes')['nodes'])

    def node(self, node_id: str) -> dict[str, Any] | None:
        return next((n for n in self.nodes() if n['id'] == node_id), None)

    def begin_training(self, node: str, **options: Any) -> dict[str, Any]:
        """Start a training on the connected trainer ``node`` (id or sid), as the UI's "train" button does."""
        answer = self._json('POST', f'{self._project_path}/trainings', {'node': node, **options})
        return dict(answer)

    def trainings(self) -> list[dict[str, Any]]:
        """Every training the Loop started for the project (``number``, ``created``, ``accepted``, ...)."""
        return list(self._json('GET', f'{self._project_path}/trainings')['trainings'])

    def training_updates(self) -> list[dict[str, Any]]:
        """Every ``update_training`` the Loop received for the project, oldest first."""
        return list(self._json('GET', f'{self._project_path}/trainings')['updates'])

    # ------------------------------------------------------------------ models and deployment

    def models(self) -> list[dict[str, Any]]:
        return list(self._json('GET', f'{self._project_path}/models')['models'])

    def model_of_training(self, training_number: int, model_format: str) -> dict[str, Any] | None:
        """The model a training uploaded in ``model_format``, or None while it has not."""
        for model in self.models():
            if model.get('training_number') == training_number and model_format in (model.get('formats') or []):
                return model
        return None

    def deploy(self, model_id: str) -> dict[str, Any]:
        """Make ``model_id`` the project's deployment target (detectors in ``follow_loop`` mode switch to it)."""
        return dict(self._json('PUT', f'{self._project_path}/deployment', {'model_id': model_id})['target'])

    # ------------------------------------------------------------------ images

    def images(self, state: str | None = None) -> list[dict[str, Any]]:
        path = f'{self._project_path}/images' + (f'?state={state}' if state else '')
        return list(self._json('GET', path)['images'])

    def image_jpeg(self, image_id: str) -> bytes:
        """The image file as the Loop stores it (what the UI shows)."""
        path = f'/api/{self.organization}/projects/{self.project}/images/{image_id}/main'
        return self._send('GET', path).content

    def annotate(self, image_id: str, annotations: dict[str, Any], *, state: str = 'complete') -> dict[str, Any]:
        """Replace the image's annotations of the kinds given and move it to ``state``, as a person would."""
        return dict(self._json('PUT', f'{self._project_path}/images/{image_id}', {**annotations, 'state': state}))

    def upload_batches(self) -> list[dict[str, Any]]:
        """Every outbox batch the Loop received for the project (``status``, ``image_ids``), oldest first."""
        return list(self._json('GET', f'{self._project_path}/uploads')['batches'])

    def uploaded_image_ids(self) -> list[str]:
        """The ids of every image an outbox delivered (accepted batches only), in arrival order."""
        return [i for batch in self.upload_batches() if batch.get('status') == 200 for i in batch['image_ids']]
