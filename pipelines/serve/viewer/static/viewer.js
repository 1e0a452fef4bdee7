// Vid-LLM viewer: a client of API v1 that draws what the model reconstructed and answers.
//
// Geometry arrives in the scene's first-camera frame, metres, OpenCV axes (x right, y down, z forward): the
// point cloud as binary PLY (GET v1/scenes/{id}/pointcloud), the cameras as JSON (GET v1/scenes/{id}/cameras),
// boxes as JSON centre + size (POST v1/scenes/{id}/ground). The 3D view keeps that frame and only turns the
// orbit camera's "up" to -y, so distances on screen are the model's metres. Every data call sends the bearer
// token from sessionStorage as an Authorization header; server text is only ever inserted as textContent.

import * as THREE from 'three';
import { OrbitControls } from 'three/addons/OrbitControls.js';
import { PLYLoader } from 'three/addons/PLYLoader.js';

const API_ROOT = new URL('../', window.location.href); // the page lives at <prefix>/viewer/
const TOKEN_KEY = 'vidllm.viewer.token';
const COLORS = {
  trajectory: 0x00d1ff, ground: 0xffb000, caption: 0xff3df2, selected: 0x39ff14, background: 0x14161b,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- API client

class ApiFailure extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, { method = 'GET', json, form, binary = false } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary and Content-Length
  }
  const response = await fetch(new URL(path, API_ROOT), { method, headers, body, credentials: 'omit', cache: 'no-store' });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const error = await response.json();
      if (error.detail) detail = error.field ? `${error.detail} (field: ${error.field})` : error.detail;
    } catch {
      // not a JSON error body: keep the status line
    }
    throw new ApiFailure(response.status, detail);
  }
  return binary ? response.arrayBuffer() : response.json();
}

function setStatus(text, state = 'ok') {
  const el = $('status');
  el.textContent = text;
  el.dataset.state = state;
}

// Run one user action: show progress, then the outcome or the API's error in the status line.
async function action(busyText, work) {
  setStatus(busyText, 'busy');
  try {
    const done = await work();
    setStatus(done, 'ok');
  } catch (err) {
    const hint = err.status === 401 ? ' Enter the bearer token under Access.' : '';
    setStatus(`Error: ${err.message}.${hint}`, 'error');
    if (err.status === 401) $('token').focus();
  }
}

// Anything that escapes a handler (no WebGL, a script error) still ends up in the status line.
window.addEventListener('error', (e) => setStatus(`Error: ${e.message}`, 'error'));
window.addEventListener('unhandledrejection', (e) => setStatus(`Error: ${e.reason?.message ?? e.reason}`, 'error'));

// ---------------------------------------------------------------- 3D view

const canvas = $('canvas');
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio);
const scene = new THREE.Scene();
scene.background = new THREE.Color(COLORS.background);
const camera = new THREE.PerspectiveCamera(55, 1, 0.01, 1000);
camera.up.set(0, -1, 0); // OpenCV: y points down
camera.position.set(0, -2, -4);
const controls = new OrbitControls(camera, canvas);
controls.enableDamping = false;

const layers = { cloud: new THREE.Group(), cameras: new THREE.Group(), boxes: new THREE.Group(), guides: new THREE.Group() };
Object.values(layers).forEach((group) => scene.add(group));
layers.guides.add(new THREE.AxesHelper(1));

function render() {
  renderer.render(scene, camera);
}
controls.addEventListener('change', render);

function resize() {
  const { clientWidth: w, clientHeight: h } = canvas.parentElement;
  renderer.setSize(w, h, false);
  camera.aspect = w / Math.max(h, 1);
  camera.updateProjectionMatrix();
  render();
}
new ResizeObserver(resize).observe(canvas.parentElement);

function disposeGroup(group) {
  for (const child of [...group.children]) {
    child.traverse((node) => {
      node.geometry?.dispose();
      node.material?.dispose();
    });
    group.remove(child);
  }
}

// Robust extent of the points (1st-99th percentile per axis), so a few stray points do not shrink the view.
function robustBounds(positions) {
  const n = positions.count;
  const lo = new THREE.Vector3();
  const hi = new THREE.Vector3();
  const values = new Float32Array(n);
  for (let axis = 0; axis < 3; axis += 1) {
    for (let i = 0; i < n; i += 1) values[i] = positions.array[i * 3 + axis];
    values.sort();
    lo.setComponent(axis, values[Math.floor(0.01 * (n - 1))]);
    hi.setComponent(axis, values[Math.ceil(0.99 * (n - 1))]);
  }
  return new THREE.Box3(lo, hi);
}

function showCloud(geometry) {
  disposeGroup(layers.cloud);
  const bounds = geometry.attributes.position.count > 0 ? robustBounds(geometry.attributes.position)
    : new THREE.Box3(new THREE.Vector3(-1, -1, 0), new THREE.Vector3(1, 1, 2));
  const size = bounds.getSize(new THREE.Vector3());
  const diag = Math.max(size.length(), 0.1);
  const material = new THREE.PointsMaterial({ size: Math.max(diag / 110, 0.004), vertexColors: true, sizeAttenuation: true });
  layers.cloud.add(new THREE.Points(geometry, material));
  return bounds;
}

// A grid of 1 m cells under everything (the largest y, since y points down), lines on whole metres.
function showGrid(bounds, centres) {
  layers.guides.children.filter((c) => c.isGridHelper).forEach((grid) => {
    grid.geometry.dispose();
    grid.material.dispose();
    layers.guides.remove(grid);
  });
  const all = bounds.clone();
  centres.forEach((c) => all.expandByPoint(c));
  const size = all.getSize(new THREE.Vector3());
  const cells = 2 * Math.ceil(Math.max(size.x, size.z) / 2 + 1);
  const centre = all.getCenter(new THREE.Vector3());
  const grid = new THREE.GridHelper(cells, cells, 0x566070, 0x343a46);
  grid.position.set(Math.round(centre.x), all.max.y, Math.round(centre.z));
  layers.guides.add(grid);
}

function worldFromCamera(cam, p) {
  // x_cam = R x_world + t  =>  x_world = R^T (x_cam - t)
  const m = cam.camera_from_world;
  const d = [p[0] - m[0][3], p[1] - m[1][3], p[2] - m[2][3]];
  return new THREE.Vector3(
    m[0][0] * d[0] + m[1][0] * d[1] + m[2][0] * d[2],
    m[0][1] * d[0] + m[1][1] * d[1] + m[2][1] * d[2],
    m[0][2] * d[0] + m[1][2] * d[1] + m[2][2] * d[2],
  );
}

function showCameras(payload, depth) {
  disposeGroup(layers.cameras);
  const material = new THREE.LineBasicMaterial({ color: COLORS.trajectory });
  const centres = payload.cameras.map((cam) => new THREE.Vector3(...cam.centre));
  layers.cameras.add(new THREE.Line(new THREE.BufferGeometry().setFromPoints(centres), material));
  const [h, w] = payload.image_size;
  const frusta = [];
  for (const cam of payload.cameras) {
    const k = cam.intrinsics;
    const corners = [[0, 0], [w, 0], [w, h], [0, h]].map(([u, v]) => worldFromCamera(cam, [
      ((u - k[0][2]) / k[0][0]) * depth, ((v - k[1][2]) / k[1][1]) * depth, depth,
    ]));
    const apex = new THREE.Vector3(...cam.centre);
    for (let i = 0; i < 4; i += 1) frusta.push(apex, corners[i], corners[i], corners[(i + 1) % 4]);
  }
  layers.cameras.add(new THREE.LineSegments(new THREE.BufferGeometry().setFromPoints(frusta), material));
  return centres;
}

// Look at the scene from behind and above the first camera, far enough to see all of it.
function frame(bounds, centres) {
  const all = bounds.clone();
  centres.forEach((c) => all.expandByPoint(c));
  const centre = all.getCenter(new THREE.Vector3());
  const radius = Math.max(all.getSize(new THREE.Vector3()).length() / 2, 0.2);
  const direction = new THREE.Vector3(0.35, -0.8, -1).normalize();
  camera.position.copy(centre).addScaledVector(direction, radius * 2.4);
  camera.near = radius / 100;
  camera.far = radius * 100;
  camera.updateProjectionMatrix();
  controls.target.copy(centre);
  controls.update();
}

// ---------------------------------------------------------------- boxes

const state = { sceneId: null, summaries: new Map(), boxes: [], selected: null };

function addBox(box, kind) {
  const [w, h, d] = box.size;
  const geometry = new THREE.BoxGeometry(w, h, d);
  const color = COLORS[kind];
  const line = new THREE.LineSegments(new THREE.EdgesGeometry(geometry), new THREE.LineBasicMaterial({ color }));
  const fill = new THREE.Mesh(geometry, new THREE.MeshBasicMaterial({ color, transparent: true, opacity: 0.1, depthWrite: false }));
  const group = new THREE.Group();
  group.add(fill, line);
  group.position.set(...box.center);
  layers.boxes.add(group);
  const record = { ...box, kind, group, line, fill, item: null };
  fill.userData.record = record;
  state.boxes.push(record);
  return record;
}

function clearBoxes(kind) {
  for (const record of state.boxes.filter((r) => kind === undefined || r.kind === kind)) {
    record.group.traverse((node) => {
      node.geometry?.dispose();
      node.material?.dispose();
    });
    layers.boxes.remove(record.group);
    record.item?.remove();
    if (state.selected === record) state.selected = null;
  }
  state.boxes = state.boxes.filter((r) => kind !== undefined && r.kind !== kind);
}

const fmt = (v) => v.map((x) => x.toFixed(2)).join(', ');

function describe(record) {
  const score = record.score === undefined ? '' : ` · score ${record.score.toFixed(2)}`;
  return `centre (${fmt(record.center)}) m · size (${fmt(record.size)}) m${score}`;
}

async function captionBox(record) {
  if (state.selected) {
    state.selected.line.material.color.setHex(COLORS[state.selected.kind]);
    state.selected.item?.classList.remove('selected');
  }
  state.selected = record;
  record.line.material.color.setHex(COLORS.selected);
  record.item?.classList.add('selected');
  render();
  await action('Captioning the selected box…', async () => {
    const { caption } = await api(`./v1/scenes/${state.sceneId}/caption`, {
      method: 'POST', json: { box: { center: record.center, size: record.size } },
    });
    $('caption').textContent = `${caption}\n— ${describe(record)}`;
    if (record.item) record.item.querySelector('.caption-text').textContent = caption;
    return 'Caption ready.';
  });
}

// A click (not a drag) on the view selects the nearest box under the pointer and captions it.
const pointer = { x: 0, y: 0 };
canvas.addEventListener('pointerdown', (e) => {
  pointer.x = e.clientX;
  pointer.y = e.clientY;
});
canvas.addEventListener('pointerup', (e) => {
  if (Math.hypot(e.clientX - pointer.x, e.clientY - pointer.y) > 4 || !state.sceneId) return;
  const rect = canvas.getBoundingClientRect();
  const ndc = new THREE.Vector2(((e.clientX - rect.left) / rect.width) * 2 - 1, -((e.clientY - rect.top) / rect.height) * 2 + 1);
  const raycaster = new THREE.Raycaster();
  raycaster.setFromCamera(ndc, camera);
  const hit = raycaster.intersectObjects(state.boxes.map((r) => r.fill), false)[0];
  if (hit) captionBox(hit.object.userData.record);
});

// ---------------------------------------------------------------- scenes

function showInfo(rows) {
  const dl = $('scene-info');
  dl.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = name;
    const dd = document.createElement('dd');
    dd.textContent = value;
    dl.append(dt, dd);
  }
}

async function refreshScenes(selectId) {
  const { scenes } = await api('./v1/scenes');
  const select = $('scenes');
  select.replaceChildren();
  for (const entry of scenes) {
    const option = document.createElement('option');
    option.value = entry.scene_id;
    option.textContent = `${entry.scene_id.slice(0, 12)}… (${entry.frames_used} frames)`;
    select.append(option);
  }
  if (selectId) select.value = selectId;
  return scenes.length;
}

async function openScene(sceneId) {
  const [ply, cams] = await Promise.all([
    api(`./v1/scenes/${sceneId}/pointcloud`, { binary: true }),
    api(`./v1/scenes/${sceneId}/cameras`),
  ]);
  state.sceneId = sceneId;
  clearBoxes();
  $('answer').textContent = '';
  $('caption').textContent = '';
  const geometry = new PLYLoader().parse(ply);
  const bounds = showCloud(geometry);
  const size = bounds.getSize(new THREE.Vector3());
  const centres = showCameras(cams, THREE.MathUtils.clamp(size.length() / 25, 0.03, 0.3));
  showGrid(bounds, centres);
  frame(bounds, centres);
  // The relative-to-metric scale is reported once, when the scene is registered (here or by another client).
  const summary = state.summaries.get(sceneId);
  showInfo([
    ['scene', sceneId],
    ['frames', String(cams.cameras.length)],
    ...(summary ? [['metric scale', summary.metric_scale.toFixed(3)]] : []),
    ['points', geometry.attributes.position.count.toLocaleString('en')],
    ['extent', `${size.x.toFixed(2)} × ${size.y.toFixed(2)} × ${size.z.toFixed(2)} m`],
  ]);
  render();
  return `Scene ${sceneId.slice(0, 12)}… loaded: ${geometry.attributes.position.count} points, ${cams.cameras.length} cameras.`;
}

async function registered(summary) {
  state.summaries.set(summary.scene_id, summary);
  await refreshScenes(summary.scene_id);
  return openScene(summary.scene_id);
}

function requireScene() {
  if (!state.sceneId) throw new ApiFailure(0, 'no scene is open: upload or pick one first');
}

// ---------------------------------------------------------------- panel

$('token').value = sessionStorage.getItem(TOKEN_KEY) || '';
$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  action('Checking access…', async () => `Access OK: ${await refreshScenes()} registered scene(s).`);
});

$('upload-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const file = $('video').files[0];
  if (!file) {
    setStatus('Choose a video file first.', 'error');
    return;
  }
  const form = new FormData();
  form.append('video', file, file.name);
  action(`Uploading ${file.name} and reconstructing…`, async () => registered(await api('./v1/scenes', { method: 'POST', form })));
});

$('uri-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const uri = $('uri').value.trim();
  action(`Registering ${uri}…`, async () => registered(await api('./v1/scenes:from_uri', { method: 'POST', json: { uri } })));
});

$('pick-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const sceneId = $('scenes').value;
  if (!sceneId) {
    setStatus('No registered scene to open: upload a video first.', 'error');
    return;
  }
  action('Loading the scene…', () => openScene(sceneId));
});

$('refresh').addEventListener('click', () => {
  action('Listing scenes…', async () => `${await refreshScenes()} registered scene(s).`);
});

$('ask-form').addEventListener('submit', (e) => {
  e.preventDefault();
  action('Thinking…', async () => {
    requireScene();
    const { answer } = await api(`./v1/scenes/${state.sceneId}/answer`, {
      method: 'POST', json: { question: $('question').value },
    });
    $('answer').textContent = answer;
    return 'Answered.';
  });
});

$('ground-form').addEventListener('submit', (e) => {
  e.preventDefault();
  action('Grounding…', async () => {
    requireScene();
    const { boxes } = await api(`./v1/scenes/${state.sceneId}/ground`, {
      method: 'POST', json: { description: $('description').value },
    });
    clearBoxes('ground');
    const list = $('boxes');
    list.replaceChildren();
    for (const box of boxes) {
      const record = addBox(box, 'ground');
      const item = document.createElement('li');
      item.textContent = describe(record);
      const caption = document.createElement('span');
      caption.className = 'caption-text';
      item.append(caption);
      item.addEventListener('click', () => captionBox(record));
      list.append(item);
      record.item = item;
    }
    render();
    return `${boxes.length} box(es) found; click one to caption it.`;
  });
});

$('caption-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const values = ['x', 'y', 'z', 'w', 'h', 'd'].map((name) => Number.parseFloat(e.target.elements[name].value));
  if (values.some((v) => !Number.isFinite(v)) || values.slice(3).some((v) => v <= 0)) {
    setStatus('Enter the box centre (x, y, z) and a positive size (w, h, d) in metres.', 'error');
    return;
  }
  if (!state.sceneId) {
    setStatus('Error: no scene is open: upload or pick one first.', 'error');
    return;
  }
  const record = addBox({ center: values.slice(0, 3), size: values.slice(3) }, 'caption');
  captionBox(record);
});

resize();
action('Listing scenes…', async () => `${await refreshScenes()} registered scene(s). Upload a video or pick one.`);
