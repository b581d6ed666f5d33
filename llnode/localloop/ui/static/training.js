// Trainings page: begin a training. Training page: stop/abort, and a chart of F1, precision and recall per
// epoch that polls the training's metrics while it runs.
'use strict';
(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const form = document.getElementById('begin-training');
  if (form) {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const message = document.getElementById('begin-message');
      const button = document.getElementById('begin');
      button.disabled = true;
      llnode.say(message, 'sending begin_training…');
      try {
        const answer = await llnode.post(window.location.pathname, {
          node: form.elements.node.value, model_variant: form.elements.model_variant.value,
        });
        if (!answer.accepted) throw new Error(`the trainer refused: ${JSON.stringify(answer.ack)}`);
        window.location.href = `${window.location.pathname.replace(/\/$/, '')}/${answer.training_number}`;
      } catch (e) {
        llnode.say(message, e.message, true);
        button.disabled = false;
      }
    });
  }

  const dataElement = document.getElementById('training-data');
  if (!dataElement) return;
  const data = JSON.parse(dataElement.textContent);
  const chart = document.getElementById('chart');
  const W = 640, H = 320, left = 40, right = 12, top = 12, bottom = 30;

  function element(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(metrics) {
    document.getElementById('training-state').textContent = metrics.state;
    document.getElementById('training-model').textContent = metrics.model || '-';
    const points = metrics.points;
    chart.replaceChildren();
    const maxEpoch = Math.max(1, ...points.map((p) => p.epoch));
    const x = (epoch) => left + (W - left - right) * (maxEpoch === 1 ? 0.5 : (epoch - 1) / (maxEpoch - 1));
    const y = (value) => top + (H - top - bottom) * (1 - value);
    for (let v = 0; v <= 1.0001; v += 0.25) {
      chart.append(element('line', { x1: left, x2: W - right, y1: y(v), y2: y(v), class: 'grid-line' }));
      chart.append(element('text', { x: left - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, v.toFixed(2)));
    }
    chart.append(element('text', { x: (W + left) / 2, y: H - 6, class: 'axis', 'text-anchor': 'middle' },
      points.length ? `epoch (1–${maxEpoch})` : 'no metrics yet'));
    for (const key of ['precision', 'recall', 'f1']) {
      if (points.length > 1) {
        chart.append(element('polyline', {
          class: `series ${key}`, points: points.map((p) => `${x(p.epoch)},${y(p[key])}`).join(' '),
        }));
      }
      for (const p of points) {
        const dot = element('circle', { class: `point ${key}`, cx: x(p.epoch), cy: y(p[key]), r: 4 });
        dot.append(element('title', {}, `epoch ${p.epoch}: ${key} ${p[key]}`));
        chart.append(dot);
      }
    }
    const body = document.querySelector('#points tbody');
    body.replaceChildren(...points.map((p) => {
      const row = document.createElement('tr');
      for (const value of [p.epoch, p.f1.toFixed(3), p.precision.toFixed(3), p.recall.toFixed(3)]) {
        const cell = document.createElement('td');
        cell.textContent = value;
        if (typeof value === 'string') cell.className = 'num';
        row.append(cell);
      }
      return row;
    }));
  }

  async function poll() {
    try {
      const response = await fetch(data.metrics_url, { credentials: 'same-origin' });
      if (response.ok) draw(await response.json());
    } catch (e) { /* try again */ }
    setTimeout(poll, 1000);
  }

  draw(data.metrics);
  setTimeout(poll, 1000);

  document.querySelectorAll('#training-buttons button').forEach((button) => {
    button.addEventListener('click', async () => {
      const message = document.getElementById('command-message');
      llnode.say(message, `sending ${button.dataset.command}…`);
      try {
        const answer = await llnode.post(`/nodes/${encodeURIComponent(button.dataset.node)}/${button.dataset.command}`, {});
        llnode.say(message, `${button.dataset.command}: ${JSON.stringify(answer.ack)}`);
      } catch (e) {
        llnode.say(message, e.message, true);
      }
    });
  });
})();
