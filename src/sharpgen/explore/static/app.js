// sharpgen explorer page: sliders -> POST /api/render -> image, measured parameters, neighbours.
// Plain JavaScript, no build step, no external resources.
"use strict";

const STEPS = 1000;               // slider positions between the reachable min and max
let CONFIG = null;
const state = { base: { seed: 0 }, edits: [] };   // edits: {target, hold: [...], value|null}
let inFlight = false, pending = false, lastView = null;

const $ = (id) => document.getElementById(id);

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  return (a !== 0 && (a >= 1e4 || a < 1e-2)) ? v.toExponential(3) : Number(v.toPrecision(4)).toString();
}

function showError(msg) {
  const box = $("error");
  if (msg) { box.textContent = msg; box.hidden = false; } else { box.textContent = ""; box.hidden = true; }
}

function sliderSpec(target) { return CONFIG.sliders.find((s) => s.target === target); }
function toFit(spec, v) { return spec.log ? Math.log10(v) : v; }
function fromFit(spec, y) { return spec.log ? Math.pow(10, y) : y; }

async function api(path, options) {
  const resp = await fetch(path, options);
  let body;
  try { body = await resp.json(); } catch (e) { throw new Error(`the server answered ${resp.status} without JSON`); }
  if (!resp.ok) throw new Error(body.error || `the server answered ${resp.status}`);
  return body;
}

function buildSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  for (const s of CONFIG.sliders) {
    const div = document.createElement("div");
    div.className = "slider";
    div.innerHTML = `
      <div class="head"><label for="slider-${s.target}" title="${s.description}">${s.target} [${s.unit}]</label>
        <span>hold <select id="hold-${s.target}"></select></span></div>
      <input id="slider-${s.target}" type="range" min="0" max="${STEPS}" step="1" value="${STEPS / 2}">
      <div class="range"><span id="min-${s.target}"></span>
        <input id="value-${s.target}" type="text" inputmode="decimal" aria-label="${s.target} value">
        <span id="max-${s.target}"></span></div>`;
    box.appendChild(div);
    const sel = div.querySelector("select");
    s.holds.forEach((h, i) => {
      const o = document.createElement("option");
      o.value = String(i); o.textContent = h.length ? h.join(", ") : "none";
      sel.appendChild(o);
    });
    state.edits.push({ target: s.target, hold: s.holds[0], value: null });
    sel.addEventListener("change", () => { edit(s.target).hold = s.holds[Number(sel.value)]; edit(s.target).value = null; request(); });
    $(`slider-${s.target}`).addEventListener("input", () => onSlider(s.target));
    $(`value-${s.target}`).addEventListener("change", () => onTyped(s.target));
  }
}

function edit(target) { return state.edits.find((e) => e.target === target); }

function onSlider(target) {
  const info = lastView && lastView.sliders[target];
  if (!info || info.min === null || info.max === null) return;
  const spec = sliderSpec(target);
  const pos = Number($(`slider-${target}`).value) / STEPS;
  const y = toFit(spec, info.min) + pos * (toFit(spec, info.max) - toFit(spec, info.min));
  edit(target).value = fromFit(spec, y);
  $(`value-${target}`).value = fmt(edit(target).value);
  request();
}

function onTyped(target) {
  const text = $(`value-${target}`).value.trim();
  const v = Number(text);
  if (text === "" || !isFinite(v)) { showError(`${target}: "${text}" is not a number`); return; }
  edit(target).value = v;
  request();
}

function placeSlider(target, info, value) {
  const spec = sliderSpec(target);
  $(`min-${target}`).textContent = fmt(info.min);
  $(`max-${target}`).textContent = fmt(info.max);
  const el = $(`slider-${target}`);
  const ok = info.min !== null && info.max !== null && info.max > info.min;
  el.disabled = !ok;
  if (ok && value !== null && isFinite(value) && value > 0 || (ok && !spec.log && value !== null)) {
    const lo = toFit(spec, info.min), hi = toFit(spec, info.max);
    el.value = String(Math.round(STEPS * Math.min(1, Math.max(0, (toFit(spec, value) - lo) / (hi - lo)))));
  }
  if (document.activeElement !== $(`value-${target}`)) $(`value-${target}`).value = fmt(value);
}

function showView(v) {
  lastView = v;
  $("patch").src = v.image;
  for (const s of CONFIG.sliders) {
    const info = v.sliders[s.target];
    if (info) placeSlider(s.target, info, edit(s.target).value !== null ? edit(s.target).value : info.base);
  }
  const body = $("measured").querySelector("tbody");
  body.innerHTML = "";
  for (const p of CONFIG.shown) {
    const e = edit(p.name);
    const req = e && e.value !== null ? e.value : null;
    const tr = document.createElement("tr");
    const m = v.measured[p.name], b = v.base_measured[p.name];
    const changed = m !== null && b !== null && Math.abs(m - b) > 1e-9 * Math.max(1, Math.abs(b));
    tr.innerHTML = `<td>${p.name}</td><td>${fmt(b)}</td><td>${fmt(req)}</td>
      <td id="measured-${p.name}" data-value="${m === null ? "" : m}" class="${changed ? "changed" : ""}">${fmt(m)}</td><td>${p.unit}</td>`;
    body.appendChild(tr);
  }
  const t = v.timing_ms;
  $("timing").textContent = `update ${t.total.toFixed(0)} ms on the server (generate + measure `
    + `${t["generate+measure"].toFixed(0)}, nearest patches ${t.neighbours.toFixed(0)}, image ${t.png.toFixed(0)} ms)`;
  $("view-title").textContent = v.base.kind === "upload"
    ? `Edited upload ${v.base.name} (inversion error ${v.base.rel_error.toFixed(2)})`
    : `Generated patch, seed ${v.base.seed}`;
  const list = $("neighbours");
  list.innerHTML = "";
  for (const n of v.neighbours) {
    const li = document.createElement("li");
    const params = CONFIG.shown.filter((p) => n.params[p.name] !== undefined)
      .map((p) => `${p.name} ${fmt(n.params[p.name])}`).join("<br>");
    li.innerHTML = `<div class="nb"><img src="${n.image}" alt="HARP ${n.harpnum}"><div class="meta">
      <b>HARP ${n.harpnum}</b> (${n.split})<br>${n.t_rec}<br>cosine ${n.similarity.toFixed(3)}<br>${params}</div></div>`;
    list.appendChild(li);
  }
  document.body.dataset.renders = String(Number(document.body.dataset.renders) + 1);
}

async function request() {
  if (inFlight) { pending = true; return; }
  inFlight = true;
  document.body.dataset.busy = "1";
  try {
    const payload = JSON.stringify({ base: state.base, edits: state.edits, refine: $("refine").checked ? 2 : 0 });
    const v = await api("/api/render", { method: "POST", headers: { "Content-Type": "application/json" }, body: payload });
    showError(null);
    showView(v);
  } catch (err) {
    showError(err.message);
    document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
  } finally {
    inFlight = false;
    if (pending) { pending = false; request(); } else { document.body.dataset.busy = "0"; }
  }
}

function resetEdits() { for (const e of state.edits) e.value = null; }

function setSeed(seed) {
  if (!Number.isInteger(seed) || seed < 0) { showError(`seed must be a whole number >= 0, got "${$("seed").value}"`); return; }
  $("seed").value = String(seed);
  state.base = { seed };
  $("upload-view").hidden = true;
  resetEdits();
  request();
}

async function upload() {
  const file = $("upload-file").files[0];
  if (!file) { showError("choose a FITS file first"); return; }
  $("upload-status").textContent = `inverting ${file.name} (this takes a while on a CPU)…`;
  document.body.dataset.busy = "1";
  try {
    const data = await file.arrayBuffer();
    const r = await api("/api/upload", { method: "POST", headers: { "Content-Type": "application/octet-stream",
      "X-Filename": encodeURIComponent(file.name) }, body: data });
    $("upload-status").textContent = `${file.name}: relative pixel error ${r.rel_error.toFixed(3)} `
      + `(bound ${r.bound.toFixed(2)}), inverted in ${r.seconds.toFixed(1)} s`;
    $("real-img").src = r.real_image; $("recon-img").src = r.reconstruction_image;
    $("upload-view").hidden = false;
    state.base = { upload: r.upload };
    resetEdits();
    showError(null);
    document.body.dataset.busy = "0";
    await request();
  } catch (err) {
    $("upload-status").textContent = "";
    showError(err.message);
    document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
    document.body.dataset.busy = "0";
  }
}

async function init() {
  try {
    CONFIG = await api("/api/config");
  } catch (err) { showError(err.message); return; }
  $("about").textContent = `${CONFIG.sliders.length} calibrated parameters, ${CONFIG.space} space, `
    + `${CONFIG.units}; colour scale ±${fmt(CONFIG.vmax_gauss)} G`;
  $("colorbar-img").src = CONFIG.colorbar;
  $("data-source").textContent = CONFIG.data_source;  // synthetic data is never called real
  $("cb-min").textContent = `−${fmt(CONFIG.vmax_gauss)} G`;
  $("cb-max").textContent = `+${fmt(CONFIG.vmax_gauss)} G`;
  buildSliders();
  $("seed").addEventListener("change", () => setSeed(Number($("seed").value)));
  $("seed-up").addEventListener("click", () => setSeed(Number($("seed").value) + 1));
  $("seed-down").addEventListener("click", () => setSeed(Math.max(0, Number($("seed").value) - 1)));
  $("reset").addEventListener("click", () => { resetEdits(); request(); });
  $("refine").addEventListener("change", () => request());
  $("upload-btn").addEventListener("click", upload);
  request();
}

init();
