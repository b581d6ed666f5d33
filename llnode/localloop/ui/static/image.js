// The image page: layers, annotating boxes and points (draw, move, delete, save), the image's state and tags,
// and an annotator node's tool (mouse and key events forwarded through the Loop, its SVG drawn over the image).
'use strict';
(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const data = JSON.parse(document.getElementById('image-data').textContent);
  const stage = document.getElementById('stage');
  const layers = {
    annotations: document.getElementById('layer-annotations'),
    segmentations: document.getElementById('layer-segmentations'),
    tool: document.getElementById('layer-tool'),
    draft: document.getElementById('layer-draft'),
  };
  const message = document.getElementById('message');
  const categorySelect = document.getElementById('category');
  const categories = data.categories;
  const byId = Object.fromEntries(categories.map((c) => [c.id, c]));
  const COLOR = /^#[0-9a-fA-F]{3,8}$/;
  let image = data.image;
  let boxes = [], points = [];
  let mode = 'select', selected = null, drag = null, draft = null, dirty = false;
  let toolNode = null;

  const colorOf = (categoryId) => {
    const c = byId[categoryId];
    return c && COLOR.test(c.color || '') ? c.color : '#00BCD4';
  };
  const say = (text, isError) => llnode.say(message, text, isError);

  function element(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function load(item) {
    image = item;
    boxes = (item.box_annotations || []).map((b) => ({ ...b }));
    points = (item.point_annotations || []).map((p) => ({ ...p }));
    selected = null;
    dirty = false;
    document.getElementById('image-state').textContent = item.state;
    const tagList = document.getElementById('tag-list');
    tagList.replaceChildren(...(item.tags || []).map((t) => {
      const span = document.createElement('span');
      span.className = 'tag';
      span.textContent = t;
      return span;
    }));
    render();
    renderSegmentations();
  }

  function render() {
    const g = layers.annotations;
    g.replaceChildren();
    boxes.forEach((b, index) => {
      const rect = element('rect', {
        class: `annotation box editable${isSelected('box', index) ? ' selected' : ''}`,
        x: b.x, y: b.y, width: b.width, height: b.height, stroke: colorOf(b.category_id),
        'data-kind': 'box', 'data-index': index,
      });
      rect.append(element('title', {}, b.category_name || ''));
      g.append(rect);
      g.append(element('text', { class: 'label', x: b.x, y: b.y - 4, fill: colorOf(b.category_id) }, b.category_name || ''));
    });
    points.forEach((p, index) => {
      const dot = element('circle', {
        class: `annotation point editable${isSelected('point', index) ? ' selected' : ''}`,
        cx: p.x, cy: p.y, r: 7, stroke: colorOf(p.category_id), 'data-kind': 'point', 'data-index': index,
      });
      dot.append(element('title', {}, p.category_name || ''));
      g.append(dot);
    });
    document.getElementById('delete-selected').disabled = selected === null;
    if (dirty) say('unsaved changes');
  }

  function renderSegmentations() {
    const g = layers.segmentations;
    g.replaceChildren();
    for (const s of image.segmentation_annotations || []) {
      const pts = (s.shape && s.shape.points) || [];
      g.append(element('polygon', {
        class: 'annotation segmentation', points: pts.map((p) => `${p.x},${p.y}`).join(' '),
        stroke: colorOf(s.category_id), fill: colorOf(s.category_id), 'data-id': s.id || '',
      }));
    }
  }

  const isSelected = (kind, index) => selected !== null && selected.kind === kind && selected.index === index;

  function fillCategories() {
    const wanted = { box: ['box'], point: ['point'], tool: ['segmentation', 'box', 'point'] }[mode];
    const previous = categorySelect.value;
    const usable = categories.filter((c) => !wanted || wanted.includes(c.type));
    categorySelect.replaceChildren(...usable.map((c) => {
      const option = document.createElement('option');
      option.value = c.id;
      option.textContent = `${c.name} (${c.type})`;
      return option;
    }));
    if (usable.some((c) => c.id === previous)) categorySelect.value = previous;
  }

  function setMode(next) {
    mode = next;
    document.querySelectorAll('#modes button').forEach((b) => b.classList.toggle('active', b.dataset.mode === mode));
    stage.dataset.mode = mode;
    fillCategories();
  }

  function position(event) {
    const point = stage.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const p = point.matrixTransform(stage.getScreenCTM().inverse());
    return { x: Math.max(0, Math.min(image.width, p.x)), y: Math.max(0, Math.min(image.height, p.y)) };
  }

  function category() {
    const c = byId[categorySelect.value];
    if (!c) say('choose a category first', true);
    return c;
  }

  // ------------------------------------------------------------------ drawing, moving, deleting

  stage.addEventListener('contextmenu', (event) => { if (mode === 'tool') event.preventDefault(); });

  stage.addEventListener('mousedown', (event) => {
    const p = position(event);
    if (mode === 'tool') {
      forward(event.button === 2 ? 'right_mouse_down' : 'left_mouse_down', p, event);
      event.preventDefault();
      return;
    }
    if (event.button !== 0) return;
    event.preventDefault();
    if (mode === 'box') {
      if (!category()) return;
      draft = { x0: p.x, y0: p.y, rect: element('rect', { class: 'draft', x: p.x, y: p.y, width: 0, height: 0 }) };
      layers.draft.replaceChildren(draft.rect);
    } else if (mode === 'point') {
      const c = category();
      if (!c) return;
      points.push({ category_id: c.id, category_name: c.name, x: Math.round(p.x), y: Math.round(p.y) });
      selected = { kind: 'point', index: points.length - 1 };
      dirty = true;
      render();
    } else {
      const target = event.target.closest('[data-kind]');
      if (target && layers.annotations.contains(target)) {
        selected = { kind: target.dataset.kind, index: parseInt(target.dataset.index, 10) };
        const shape = selected.kind === 'box' ? boxes[selected.index] : points[selected.index];
        drag = { start: p, x: shape.x, y: shape.y, moved: false };
      } else {
        selected = null;
      }
      render();
    }
  });

  stage.addEventListener('mousemove', (event) => {
    const p = position(event);
    if (mode === 'tool') { forward('mouse_move', p, event); return; }
    if (draft) {
      const x = Math.min(draft.x0, p.x), y = Math.min(draft.y0, p.y);
      Object.entries({ x, y, width: Math.abs(p.x - draft.x0), height: Math.abs(p.y - draft.y0) })
        .forEach(([k, v]) => draft.rect.setAttribute(k, v));
    } else if (drag && selected) {
      const shape = selected.kind === 'box' ? boxes[selected.index] : points[selected.index];
      const w = selected.kind === 'box' ? shape.width : 0, h = selected.kind === 'box' ? shape.height : 0;
      shape.x = Math.round(Math.max(0, Math.min(image.width - w, drag.x + p.x - drag.start.x)));
      shape.y = Math.round(Math.max(0, Math.min(image.height - h, drag.y + p.y - drag.start.y)));
      drag.moved = true;
      dirty = true;
      render();
    }
  });

  window.addEventListener('mouseup', (event) => {
    if (mode === 'tool') {
      if (event.target === stage || stage.contains(event.target)) {
        forward(event.button === 2 ? 'right_mouse_up' : 'left_mouse_up', position(event), event);
      }
      return;
    }
    if (draft) {
      const x = parseFloat(draft.rect.getAttribute('x')), y = parseFloat(draft.rect.getAttribute('y'));
      const width = parseFloat(draft.rect.getAttribute('width')), height = parseFloat(draft.rect.getAttribute('height'));
      layers.draft.replaceChildren();
      draft = null;
      const c = category();
      if (c && width >= 3 && height >= 3) {
        boxes.push({
          category_id: c.id, category_name: c.name,
          x: Math.round(x), y: Math.round(y), width: Math.round(width), height: Math.round(height),
        });
        selected = { kind: 'box', index: boxes.length - 1 };
        dirty = true;
        render();
      }
    }
    drag = null;
  });

  function deleteSelected() {
    if (selected === null) return;
    (selected.kind === 'box' ? boxes : points).splice(selected.index, 1);
    selected = null;
    dirty = true;
    render();
  }

  document.addEventListener('keydown', (event) => {
    if (event.target.tagName === 'INPUT' || event.target.tagName === 'SELECT') return;
    if (mode === 'tool') { forwardKey('key_down', event); return; }
    if (event.key === 'Delete' || event.key === 'Backspace') { deleteSelected(); event.preventDefault(); }
  });
  document.addEventListener('keyup', (event) => {
    if (mode === 'tool' && event.target.tagName !== 'INPUT') forwardKey('key_up', event);
  });

  document.getElementById('delete-selected').addEventListener('click', deleteSelected);
  document.querySelectorAll('#modes button').forEach((b) => b.addEventListener('click', () => {
    if (toolNode) closeTool();
    setMode(b.dataset.mode);
  }));

  // ------------------------------------------------------------------ saving: the control API's update_image

  async function update(body, done) {
    try {
      load(await llnode.post(data.urls.save, body));
      say(done);
    } catch (e) {
      say(`not saved: ${e.message}`, true);
    }
  }

  document.getElementById('save').addEventListener('click', () => update({
    box_annotations: boxes.map((b) => ({
      ...(b.id ? { id: b.id } : {}), category_id: b.category_id, x: b.x, y: b.y, width: b.width, height: b.height,
    })),
    point_annotations: points.map((p) => ({ ...(p.id ? { id: p.id } : {}), category_id: p.category_id, x: p.x, y: p.y })),
  }, 'annotations saved'));

  document.querySelectorAll('#state-buttons button').forEach((b) => b.addEventListener('click', () => {
    update({ state: b.dataset.state }, `moved to ${b.dataset.state}`);
  }));

  document.getElementById('save-tags').addEventListener('click', () => {
    const tags = document.getElementById('tags').value.split(',').map((t) => t.trim()).filter((t) => t);
    update({ tags }, 'tags saved');
  });

  document.querySelectorAll('[data-toggle]').forEach((box) => box.addEventListener('change', () => {
    stage.querySelectorAll(`[data-layer="${CSS.escape(box.dataset.toggle)}"]`).forEach((g) => {
      g.style.display = box.checked ? '' : 'none';
    });
  }));

  // ------------------------------------------------------------------ an annotator node's tool

  const ALLOWED = new Set(['g', 'polygon', 'polyline', 'path', 'circle', 'ellipse', 'rect', 'line', 'text']);
  const ATTRIBUTES = new Set(['points', 'd', 'cx', 'cy', 'r', 'rx', 'ry', 'x', 'y', 'x1', 'y1', 'x2', 'y2', 'width',
    'height', 'fill', 'stroke', 'stroke-width', 'fill-opacity', 'stroke-opacity', 'opacity', 'stroke-dasharray',
    'font-size', 'text-anchor']);

  // The node's SVG is parsed, and only plain shapes with presentation attributes are copied: no script, no
  // event handler, no link can come through a tool's answer.
  function sanitized(svgText) {
    const parsed = new DOMParser().parseFromString(`<svg xmlns="${SVG}">${svgText || ''}</svg>`, 'image/svg+xml');
    const root = parsed.documentElement;
    const copy = (source, target) => {
      for (const child of source.childNodes) {
        if (child.nodeType === Node.TEXT_NODE && target.localName === 'text') {
          target.append(document.createTextNode(child.textContent));
        } else if (child.nodeType === Node.ELEMENT_NODE && ALLOWED.has(child.localName)) {
          const clean = document.createElementNS(SVG, child.localName);
          for (const attribute of child.attributes) {
            if (ATTRIBUTES.has(attribute.name) && !/url\s*\(|javascript:/i.test(attribute.value)) {
              clean.setAttribute(attribute.name, attribute.value);
            }
          }
          copy(child, clean);
          target.append(clean);
        }
      }
    };
    const g = document.createElementNS(SVG, 'g');
    if (root.localName === 'svg' && !parsed.querySelector('parsererror')) copy(root, g);
    return g;
  }

  let inFlight = false, queue = [];

  function forward(eventType, p, event) {
    if (!toolNode) return;
    const c = byId[categorySelect.value];
    if (!c) { say('choose a category first', true); return; }
    const body = {
      frontend_id: data.frontend_id, event_type: eventType, x: Math.round(p.x), y: Math.round(p.y),
      image_id: image.id, category_id: c.id, is_shift_key_pressed: !!(event && event.shiftKey),
    };
    if (eventType === 'mouse_move') {
      queue = queue.filter((item) => item.event_type !== 'mouse_move');  // only the newest position matters
    }
    queue.push(body);
    pump();
  }

  let lastPosition = { x: 0, y: 0 };
  stage.addEventListener('mousemove', (event) => { lastPosition = position(event); });

  function forwardKey(eventType, event) {
    if (!toolNode) return;
    const c = byId[categorySelect.value];
    if (!c) return;
    queue.push({
      frontend_id: data.frontend_id, event_type: eventType, x: Math.round(lastPosition.x), y: Math.round(lastPosition.y),
      image_id: image.id, category_id: c.id, is_shift_key_pressed: event.shiftKey,
      [eventType]: event.key,
    });
    pump();
  }

  async function pump() {
    if (inFlight || !queue.length || !toolNode) return;
    inFlight = true;
    const body = queue.shift();
    try {
      const answer = await llnode.post(data.urls.tool.replace('NODE', encodeURIComponent(toolNode)), body);
      const ack = answer.ack;
      if (!ack) {
        say('the annotator did not answer in time', true);
      } else if (!ack.success) {
        say(`the tool failed: ${ack.error_msg}`, true);
      } else {
        layers.tool.replaceChildren(sanitized(typeof ack.payload === 'string' ? ack.payload : ''));
        if (body.event_type === 'left_mouse_up' || body.event_type === 'right_mouse_up') await refreshAnnotations();
      }
    } catch (e) {
      say(`the tool failed: ${e.message}`, true);
    } finally {
      inFlight = false;
      pump();
    }
  }

  // The tool sends a finished annotation to the Loop itself (update_segmentation_annotation); show it.
  async function refreshAnnotations() {
    const before = (image.segmentation_annotations || []).length;
    const response = await fetch(data.urls.image, { credentials: 'same-origin' });
    if (!response.ok) return;
    const fresh = await response.json();
    image.segmentation_annotations = fresh.segmentation_annotations || [];
    renderSegmentations();
    const after = image.segmentation_annotations.length;
    if (after !== before) say(`the tool finished an annotation (${after} segmentation annotation${after === 1 ? '' : 's'})`);
  }

  function openTool() {
    const select = document.getElementById('annotator');
    toolNode = select.value;
    setMode('tool');
    document.getElementById('close-tool').disabled = false;
    document.getElementById('open-tool').disabled = true;
    say(`tool of ${select.options[select.selectedIndex].textContent} is open: use the mouse on the image`);
  }

  function closeTool() {
    const node = toolNode;
    toolNode = null;
    queue = [];
    layers.tool.replaceChildren();
    document.getElementById('close-tool').disabled = true;
    document.getElementById('open-tool').disabled = false;
    if (node) {
      llnode.post(data.urls.tool_logout.replace('NODE', encodeURIComponent(node)), { frontend_id: data.frontend_id })
        .catch(() => {});
    }
    setMode('select');
  }

  const openButton = document.getElementById('open-tool');
  if (openButton) {
    openButton.addEventListener('click', openTool);
    document.getElementById('close-tool').addEventListener('click', closeTool);
  }
  window.addEventListener('pagehide', () => {
    if (toolNode) {
      const csrf = document.querySelector('meta[name="csrf-token"]').content;
      fetch(data.urls.tool_logout.replace('NODE', encodeURIComponent(toolNode)), {
        method: 'POST', keepalive: true, credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
        body: JSON.stringify({ frontend_id: data.frontend_id }),
      });
    }
  });

  setMode('select');
  load(image);
})();
