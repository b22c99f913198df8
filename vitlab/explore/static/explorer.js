// vitlab explore: the page. Plain JavaScript, no build step, nothing fetched from outside.
// Every number drawn here is computed by vitlab's analysis functions on the server (or embedded by
// `vitlab explore --export`); this script only decodes, colours and draws them.
"use strict";

const $ = (id) => document.getElementById(id);
const EMBEDDED = window.VITLAB_DATA || null;  // an exported page carries its data; else the server answers

// ----------------------------------------------------------------------------------------- data access

function decode(b64) {  // base64 -> Uint8Array
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function mapKey(p) {  // the same string as MapParams.key() of vitlab/explore/compute.py
  return `${p.method}|${p.block}|${p.head}|${p.first}|${p.discard}|${p.target}`;
}

function query(p) {
  return new URLSearchParams({ method: p.method, block: p.block, head: p.head, first: p.first,
                               discard: p.discard, target: p.target }).toString();
}

const serverApi = {
  model: () => getJSON("api/model"),
  images: () => getJSON("api/images").then((r) => r.images),
  upload: (file) => getJSON("api/images", { method: "POST", body: file,
                                            headers: { "X-Filename": encodeURIComponent(file.name) } }),
  analyze: (id) => getJSON(`api/images/${id}`),
  rows: (id, block) => getJSON(`api/images/${id}/rows?block=${block}`),
  row: (id, block, head, patch) => getJSON(`api/images/${id}/row?block=${block}&head=${head}&patch=${patch}`),
  map: (id, p) => getJSON(`api/images/${id}/map?${query(p)}`),
  faithfulness: (id, p) => getJSON(`api/images/${id}/faithfulness?${query(p)}`),
};

function embedded(table, what) {
  if (table === undefined) return Promise.reject(new Error(`${what} is not embedded in this exported page`));
  return Promise.resolve(table);
}

const staticApi = EMBEDDED && {
  model: () => Promise.resolve(EMBEDDED.model),
  images: () => Promise.resolve(EMBEDDED.images.map((i) => ({ id: i.id, name: i.name, kind: "file" }))),
  upload: () => Promise.reject(new Error("an exported page has no server: run `vitlab explore` to upload images")),
  analyze: (id) => embedded(EMBEDDED.images.find((i) => i.id === id), `image ${id}`),
  rows: (id, block) => embedded((EMBEDDED.rows[id] || {})[block], `hover rows of block ${block}`)
    .then((data) => ({ block, data })),
  row: (id, block) => Promise.reject(new Error(`hover rows of block ${block} are not embedded in this page`)),
  map: (id, p) => embedded((EMBEDDED.maps[id] || {})[mapKey(p)], `the map ${mapKey(p)}`),
  faithfulness: (id, p) => embedded((EMBEDDED.faithfulness[id] || {})[mapKey(p)],
                                    "deletion/insertion of this map (the export measures the default maps)"),
};

const api = staticApi || serverApi;

// ------------------------------------------------------------------------------------------------ state

const state = {
  model: null,
  image: null,       // the analysis of the shown image
  raw: null,         // Uint8Array (depth, variants, h*w)
  pool: null,        // Uint8Array (variants, h*w) or null
  rows: new Map(),   // block -> a promise of Uint8Array (variants, h*w, h*w)
  maps: new Map(),   // map key -> {data: Uint8Array, target, target_name}
  picture: null,     // the input image as a decoded <img>
  hover: null,       // the patch under the pointer
  pinned: null,      // a clicked patch
  request: 0,        // the newest image request; older answers are dropped
  renderSeq: 0,      // the newest render; an older one still waiting for data draws nothing
  rowError: "",      // why the hover rows of the block are unavailable (an exported page without them)
  mapError: false,   // the error box shows a map that could not be had
  rowWanted: null,   // the single-row fetch waiting to go (large token counts)
  rowBusy: false,
};
window.vitlabStats = { imageShownMs: [], hoverMs: [], lastShown: "" };

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function variantIndex(head) { return state.model.variants.indexOf(String(head)); }

function params() {
  const method = $("method").value;
  const p = { method, block: Number($("block").value), head: $("head").value, first: 0, discard: 0, target: -1 };
  if (method === "pool") p.block = -1;
  if (method === "rollout" || method === "grad-rollout") {
    p.first = Number($("first").value);
    p.discard = discardValue();
    if (!state.model.fusions.includes(p.head)) p.head = "mean";
  }
  if (method === "grad-rollout") {
    p.head = "mean";
    p.target = Number($("target").value);
  }
  return p;
}

// ----------------------------------------------------------------------------------------------- colour

const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                 [250, 193, 39], [252, 255, 164]];  // 8 stops of matplotlib's inferno

const LUT = (() => {
  const lut = new Uint8Array(256 * 3);
  for (let v = 0; v < 256; v++) {
    const t = (v / 255) * (INFERNO.length - 1);
    const i = Math.min(Math.floor(t), INFERNO.length - 2);
    const f = t - i;
    for (let c = 0; c < 3; c++) lut[v * 3 + c] = Math.round(INFERNO[i][c] * (1 - f) + INFERNO[i + 1][c] * f);
  }
  return lut;
})();

function gridCanvas(values, h, w) {  // uint8 (h*w) -> a w x h canvas coloured by the LUT
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const v = values[i];
    img.data[4 * i] = LUT[3 * v];
    img.data[4 * i + 1] = LUT[3 * v + 1];
    img.data[4 * i + 2] = LUT[3 * v + 2];
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

// ------------------------------------------------------------------------------------------ the main view

function grid() { return state.model.grid; }

function drawView(values, label, marker) {
  const view = $("view");
  const ctx = view.getContext("2d");
  ctx.clearRect(0, 0, view.width, view.height);
  if (state.picture) ctx.drawImage(state.picture, 0, 0, view.width, view.height);
  if (values) {
    const [h, w] = grid();
    ctx.save();
    ctx.globalAlpha = Number($("opacity").value);
    ctx.imageSmoothingEnabled = true;  // bilinear, as the figures' upsample_map
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(gridCanvas(values, h, w), 0, 0, view.width, view.height);
    ctx.restore();
    if (marker !== null && marker !== undefined) {
      const cw = view.width / w, ch = view.height / h;
      ctx.strokeStyle = "#00e5ff";
      ctx.lineWidth = 2;
      ctx.strokeRect((marker % w) * cw, Math.floor(marker / w) * ch, cw, ch);
    }
  }
  $("caption").textContent = label;
  view.dataset.shown = label;
  window.vitlabStats.lastShown = label;
}

function headLabel(head) { return /^\d+$/.test(head) ? `head ${head}` : `heads ${head}`; }

async function currentMap() {  // {values, label} of the map the controls describe
  const p = params();
  const depth = state.model.depth;
  if (p.method === "raw") {
    const [h, w] = grid();
    const n = h * w, v = state.model.variants.length;
    const start = (p.block * v + variantIndex(p.head)) * n;
    return { values: state.raw.subarray(start, start + n), label: `raw attention, block ${p.block}, ${headLabel(p.head)}` };
  }
  if (p.method === "pool") {
    const n = grid()[0] * grid()[1];
    const start = variantIndex(p.head) * n;
    return { values: state.pool.subarray(start, start + n), label: `attention pool, ${headLabel(p.head)}` };
  }
  const key = mapKey(p);
  if (!state.maps.has(key)) {
    const m = await api.map(state.image.id, p);
    state.maps.set(key, { data: decode(m.data), target: m.target, target_name: m.target_name });
  }
  const m = state.maps.get(key);
  let label = `${p.method}, blocks ${p.first}-${p.block} of ${depth}, discard ${p.discard}`;
  if (p.method === "rollout") label += `, heads ${p.head}`;
  if (p.method === "grad-rollout") label += `, for class ${m.target_name}`;
  return { values: m.data, label };
}

const PENDING = "pending";  // a hover row on its way from the server (large token counts)

const STALE = "stale";  // a newer render started while this one waited: it draws nothing

async function render() {  // draw what the controls and the pointer ask for; "hover", "map", PENDING or STALE
  const seq = ++state.renderSeq;
  if (!state.image) return "map";
  if (!state.model.attention) { drawView(null, state.image.name, null); return "map"; }
  const patch = state.pinned !== null ? state.pinned : state.hover;
  if (patch !== null && $("hover").checked) {
    const row = await patchRow(patch);
    if (seq !== state.renderSeq) return STALE;
    if (row === PENDING) return PENDING;  // keep the last row on screen until the new one arrives
    if (row) {
      drawView(row, `patch ${patchName(patch)} attends to: block ${$("block").value}, ${headLabel($("head").value)}`,
               patch);
      drawPosition(patch);
      return "hover";
    }
  }
  try {
    const m = await currentMap();
    if (seq !== state.renderSeq) return STALE;
    const note = patch !== null && state.rowError ? ` (no hover: ${state.rowError})` : "";
    drawView(m.values, m.label + note, null);
    if (state.mapError) { showError(""); state.mapError = false; }  // the controls asked for a map that exists
  } catch (e) {
    showError(e.message);
    state.mapError = true;
  }
  drawPosition(patch);
  return "map";
}

function patchName(patch) {
  const w = grid()[1];
  return `(row ${Math.floor(patch / w)}, col ${patch % w})`;
}

// ------------------------------------------------------------------------------------------- hover rows

async function patchRow(patch) {  // uint8 (h*w) of that patch's attention row, PENDING, or null (unavailable)
  const block = Number($("block").value);
  const head = $("head").value;
  const n = grid()[0] * grid()[1];
  if (state.model.rows_inline || EMBEDDED) {
    let rows;
    try {
      rows = await blockRows(block);
    } catch (e) {
      state.rowError = e.message;
      return null;
    }
    state.rowError = "";
    const start = (variantIndex(head) * n + patch) * n;
    return rows.subarray(start, start + n);
  }
  const key = `${block}|${head}|${patch}`;
  if (state.maps.has("row:" + key)) return state.maps.get("row:" + key);
  fetchRow(block, head, patch);  // large grids: one row at a time, the newest pointer position wins
  return PENDING;
}

function blockRows(block) {  // a promise of every patch's row of a block, fetched once per image and block
  if (!state.rows.has(block)) {
    const image = state.image.id;
    const rows = api.rows(image, block).then((r) => decode(r.data));
    rows.catch(() => { if (state.image && state.image.id === image) state.rows.delete(block); });
    state.rows.set(block, rows);
  }
  return state.rows.get(block);
}

function prefetchRows() {  // fetch the shown block's rows before the pointer needs them
  if (state.image && state.model.attention && (state.model.rows_inline || EMBEDDED)) {
    blockRows(Number($("block").value)).catch(() => {});
  }
}

async function fetchRow(block, head, patch) {
  state.rowWanted = { block, head, patch, image: state.image.id };
  if (state.rowBusy) return;
  state.rowBusy = true;
  try {
    while (state.rowWanted) {
      const want = state.rowWanted;
      state.rowWanted = null;
      const r = await api.row(want.image, want.block, want.head, want.patch);
      if (state.image && want.image === state.image.id) {
        state.maps.set(`row:${want.block}|${want.head}|${want.patch}`, decode(r.data));
      }
    }
  } catch (e) {
    showError(e.message);
  } finally {
    state.rowBusy = false;
  }
  render().then(() => markHover());
}

let hoverStart = null;

function markHover() {  // the hover latency: pointer event to the next frame after the draw
  if (hoverStart === null) return;
  const start = hoverStart;
  hoverStart = null;
  requestAnimationFrame(() => window.vitlabStats.hoverMs.push(performance.now() - start));
}

function patchAt(event) {
  const view = $("view");
  const rect = view.getBoundingClientRect();
  const [h, w] = grid();
  const c = Math.floor(((event.clientX - rect.left) / rect.width) * w);
  const r = Math.floor(((event.clientY - rect.top) / rect.height) * h);
  if (r < 0 || c < 0 || r >= h || c >= w) return null;
  return r * w + c;
}

function onPointerMove(event) {
  if (!state.image || !state.model.attention) return;
  const patch = patchAt(event);
  if (patch === state.hover) return;
  state.hover = patch;
  if (state.pinned !== null) { drawPosition(patch); return; }
  hoverStart = event.timeStamp;
  render().then((drawn) => { if (drawn !== PENDING && drawn !== STALE) markHover(); });
}

// ------------------------------------------------------------------------------------------- the panels

function drawPrediction() {
  const table = $("prediction");
  table.innerHTML = "";
  const top = state.image.top || [];
  if (!top.length) { table.innerHTML = "<tr><td>the model has no classifier head</td></tr>"; return; }
  for (const t of top) {
    const tr = table.insertRow();
    tr.insertCell().textContent = t.name;
    const cell = tr.insertCell();
    cell.className = "num";
    cell.textContent = t.prob.toFixed(4);
    const bar = tr.insertCell().appendChild(document.createElement("span"));
    bar.className = "bar";
    bar.style.width = `${Math.max(1, Math.round(t.prob * 120))}px`;
  }
  const target = $("target");
  target.innerHTML = "";
  for (const t of top) target.add(new Option(`${t.name} (${t.prob.toFixed(3)})`, t.index));
}

function drawDistances() {
  const canvas = $("distances");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const d = state.image.distances;
  if (!d) return;
  const depth = d.length, ceiling = state.model.uniform_distance;
  const top = Math.max(ceiling, ...d.flat()) * 1.08;
  const left = 40, bottom = canvas.height - 24, right = canvas.width - 8;
  const x = (b) => left + ((b + 0.5) / depth) * (right - left);
  const y = (v) => bottom - (v / top) * (bottom - 8);
  ctx.strokeStyle = "#999";
  ctx.fillStyle = "#555";
  ctx.font = "11px sans-serif";
  ctx.beginPath(); ctx.moveTo(left, 8); ctx.lineTo(left, bottom); ctx.lineTo(right, bottom); ctx.stroke();
  for (let b = 0; b < depth; b++) if (depth <= 16 || b % 2 === 0) ctx.fillText(String(b), x(b) - 3, bottom + 14);
  ctx.fillText(top.toFixed(0) + " px", 2, 14);
  ctx.fillText("0", 28, bottom);
  ctx.setLineDash([5, 4]);
  ctx.strokeStyle = "#c0392b";
  ctx.beginPath(); ctx.moveTo(left, y(ceiling)); ctx.lineTo(right, y(ceiling)); ctx.stroke();
  ctx.setLineDash([]);
  const block = Number($("block").value);
  for (let b = 0; b < depth; b++) {
    ctx.fillStyle = b === block ? "#e67e22" : "#2c6fbb";
    for (const v of d[b]) { ctx.beginPath(); ctx.arc(x(b), y(v), 2.5, 0, 2 * Math.PI); ctx.fill(); }
  }
  $("distances-caption").textContent = `each dot: one head's mean attention distance (pixels) by block; dashed: ` +
    `uniform attention's ${ceiling.toFixed(1)} px; orange: the block shown`;
}

function drawPosition(patch) {
  const info = state.model.position;
  const canvas = $("position");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!info || info.reason) { $("position-caption").textContent = info ? info.reason : ""; return; }
  if (!state.position) state.position = decode(info.data);
  const [h, w] = grid();
  const p = patch === null || patch === undefined ? Math.floor(h / 2) * w + Math.floor(w / 2) : patch;
  const n = h * w;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(gridCanvas(state.position.subarray(p * n, (p + 1) * n), h, w), 0, 0, canvas.width, canvas.height);
  $("position-caption").textContent = `cosine similarity of patch ${patchName(p)}'s position embedding with every ` +
    `other (${info.of}; colour: -1 dark to 1 bright). Move the pointer over the image.`;
}

function drawFilters() {
  const box = $("filters");
  box.innerHTML = "";
  const f = state.model.filters;
  if (!f || f.reason) { $("filters-caption").textContent = f ? f.reason : ""; return; }
  const data = decode(f.data), p = f.size;
  for (let k = 0; k < f.count; k++) {
    const canvas = document.createElement("canvas");
    canvas.width = p; canvas.height = p;
    canvas.style.width = canvas.style.height = `${Math.max(28, p * 2)}px`;
    canvas.title = `component ${k + 1}: ${(100 * f.variance[k]).toFixed(1)}% of the variance`;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(p, p);
    for (let i = 0; i < p * p; i++) {
      for (let c = 0; c < 3; c++) img.data[4 * i + c] = data[(k * p * p + i) * 3 + c];
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    box.appendChild(canvas);
  }
  $("filters-caption").textContent = `the top ${f.count} principal components of the patch-embedding filters ` +
    `(paper, Figure 7 left); hover one for its share of the variance`;
}

async function measure() {
  const p = params();
  const note = $("faith-note");
  const table = $("faithfulness");
  note.textContent = "measuring…";
  table.innerHTML = "";
  try {
    const f = await api.faithfulness(state.image.id, p);
    note.textContent = `class ${f.target_name}, ${f.steps} steps; deletion: lower is better, insertion: higher`;
    table.innerHTML = "<tr><th></th><th>this map</th><th>random order</th></tr>";
    for (const [name, a, b] of [["deletion AUC", f.deletion, f.random_deletion],
                                ["insertion AUC", f.insertion, f.random_insertion]]) {
      const tr = table.insertRow();
      tr.insertCell().textContent = name;
      for (const v of [a, b]) { const c = tr.insertCell(); c.className = "num"; c.textContent = v.toFixed(4); }
    }
  } catch (e) {
    note.textContent = e.message;
  }
}

// ------------------------------------------------------------------------------------------ controls

function fillSelect(select, values, labels, chosen) {
  select.innerHTML = "";
  values.forEach((v, i) => select.add(new Option(labels ? labels[i] : String(v), v)));
  if (chosen !== undefined) select.value = String(chosen);
}

function syncControls() {  // show only the controls the method uses
  const method = $("method").value;
  const rolled = method === "rollout" || method === "grad-rollout";
  $("first-label").hidden = !rolled;
  $("discard-label").hidden = !rolled;
  $("target-label").hidden = method !== "grad-rollout";
  const head = $("head");
  for (const option of head.options) option.disabled = rolled && !state.model.fusions.includes(option.value);
  if (rolled && !state.model.fusions.includes(head.value)) head.value = "mean";
  $("discard-value").textContent = $("discard").value;
  const block = Number($("block").value);
  for (const option of $("first").options) option.disabled = Number(option.value) > block;
  if (Number($("first").value) > block) $("first").value = "0";
}

function setupModel(model) {
  state.model = model;
  $("model-name").textContent = `${model.name} · ${model.kind}` +
    (model.attention ? ` · ${model.depth} blocks × ${model.heads} heads · ${model.grid[0]}×${model.grid[1]} patches` : "");
  const view = $("view");
  const [ih, iw] = model.img_size;
  const scale = 448 / Math.max(ih, iw);
  view.width = Math.round(iw * scale);
  view.height = Math.round(ih * scale);
  if (!model.attention) {
    $("controls").hidden = true;
    $("attention-off").hidden = false;
    $("attention-off").textContent = model.reason;
    for (const id of ["distances", "position", "measure"]) $(id).hidden = true;
    $("faith-note").textContent = model.reason;
    $("filters-caption").textContent = model.reason;
    return;
  }
  if (!model.num_classes) {
    $("measure").hidden = true;
    $("faith-note").textContent = "deletion and insertion follow a class probability: the model has no classifier head";
  }
  const methods = EMBEDDED ? model.methods.filter((m) => m !== "grad-rollout" || EMBEDDED.options.grad) : model.methods;
  fillSelect($("method"), methods);
  const blocks = [...Array(model.depth).keys()];
  fillSelect($("block"), blocks, null, model.depth - 1);
  const firsts = EMBEDDED ? EMBEDDED.options.first : blocks;
  fillSelect($("first"), firsts, null, 0);
  fillSelect($("head"), model.variants, model.variants.map((v) => (/^\d+$/.test(v) ? `head ${v}` : v)), "mean");
  if (EMBEDDED) {  // the slider steps through the discard ratios the page embeds
    const d = EMBEDDED.options.discard;
    const slider = $("discard");
    slider.min = 0; slider.max = d.length - 1; slider.step = 1; slider.value = 0;
    slider.dataset.values = JSON.stringify(d);
  }
  syncControls();
  drawFilters();
}

function discardValue() {
  const slider = $("discard");
  return slider.dataset.values ? JSON.parse(slider.dataset.values)[Number(slider.value)] : Number(slider.value);
}

async function loadImage(id, started) {
  const request = ++state.request;
  showError("");
  setStatus("computing…");
  try {
    const analysis = await api.analyze(id);
    if (request !== state.request) return;  // a newer image was picked meanwhile
    const picture = new Image();
    picture.src = analysis.image;
    await picture.decode();
    state.image = analysis;
    state.picture = picture;
    state.raw = analysis.raw ? decode(analysis.raw) : null;
    state.pool = analysis.pool ? decode(analysis.pool) : null;
    state.rows = new Map();
    state.maps = new Map();
    state.hover = state.pinned = null;
    $("faithfulness").innerHTML = "";
    if (!$("measure").hidden) $("faith-note").textContent = "";
    drawPrediction();
    if (state.model.attention) drawDistances();
    await render();
    requestAnimationFrame(() => {
      const ms = performance.now() - started;
      window.vitlabStats.imageShownMs.push(ms);
      setStatus(`${analysis.name}: shown in ${ms.toFixed(0)} ms`);
      prefetchRows();
    });
  } catch (e) {
    showError(e.message);
    setStatus("");
  }
}

async function refreshImages(selected) {
  const images = await api.images();
  fillSelect($("image-select"), images.map((i) => i.id), images.map((i) => i.name), selected);
}

async function uploadFile(file) {
  const started = performance.now();
  showError("");
  setStatus(`uploading ${file.name}…`);
  try {
    const r = await api.upload(file);
    await refreshImages(r.id);
    await loadImage(r.id, started);
  } catch (e) {
    showError(`${file.name}: ${e.message}`);
    setStatus("");
  }
}

function bind() {
  $("image-select").addEventListener("change", (e) => loadImage(e.target.value, performance.now()));
  $("upload").addEventListener("change", (e) => { if (e.target.files.length) uploadFile(e.target.files[0]); });
  for (const id of ["method", "block", "head", "first", "target"]) {
    $(id).addEventListener("change", () => {
      syncControls();
      if (id === "block") { prefetchRows(); drawDistances(); }
      render();
    });
  }
  $("discard").addEventListener("input", () => { $("discard-value").textContent = discardValue(); render(); });
  $("opacity").addEventListener("input", () => render());
  $("hover").addEventListener("change", () => render());
  const view = $("view");
  view.addEventListener("pointermove", onPointerMove);
  view.addEventListener("pointerleave", () => { state.hover = null; if (state.pinned === null) render(); });
  view.addEventListener("click", (e) => {
    const patch = patchAt(e);
    state.pinned = state.pinned === patch ? null : patch;
    render();
  });
  $("measure").addEventListener("click", measure);
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    if (e.dataTransfer.files.length) uploadFile(e.dataTransfer.files[0]);
  });
}

async function start() {
  bind();
  try {
    setupModel(await api.model());
    if (EMBEDDED) { $("upload-label").hidden = true; $("drop-hint").textContent = "exported page: no uploads"; }
    await refreshImages();
    const first = $("image-select").value;
    if (first) await loadImage(first, performance.now());
    if (state.model.note) setStatus(state.model.note);
  } catch (e) {
    showError(e.message);
  }
}

start();
