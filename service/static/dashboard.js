// towerrec dashboard: plain JavaScript, no dependencies. Reads /ui/api/* and the public API
// (/recommend, /items, /similar-items); every call carries X-API-Key once one is given.
"use strict";

const ROOT = location.pathname.replace(/\/ui\/?$/, "");
const KEY_STORE = "towerrec-api-key";
const state = { key: sessionStorage.getItem(KEY_STORE) || "", keyWaiters: null, recent: [], schema: null };
const $ = (id) => document.getElementById(id);

// --- HTTP ------------------------------------------------------------------------------
function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["X-API-Key"] = state.key;
  return h;
}

function askKey(message) {
  // one dialog for every call waiting on a key
  if (!state.keyWaiters) {
    state.keyWaiters = [];
    const err = $("key-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("key-input").value = "";
    $("key-dialog").showModal();
  }
  return new Promise((resolve) => state.keyWaiters.push(resolve));
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.key = $("key-input").value;
  sessionStorage.setItem(KEY_STORE, state.key);
  $("key-dialog").close();
  $("forget-key").hidden = false;
  const waiters = state.keyWaiters || [];
  state.keyWaiters = null;
  waiters.forEach((resolve) => resolve());
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  state.key = "";
  location.reload();
});

async function call(method, path, body) {
  for (;;) {
    const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
    if (body) init.body = JSON.stringify(body);
    const r = await fetch(ROOT + path, init);
    if (r.status === 401) {
      await askKey(state.key ? "That key was refused (401). Try again." : "");
      continue;
    }
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      throw new Error(`${r.status}: ${detail}`);
    }
    return data;
  }
}
const get = (path) => call("GET", path);

// --- formatting ------------------------------------------------------------------------
const num = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
const pct = (v, d = 1) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(d)} %`);
const ms = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(v < 10 ? 2 : 1)} ms`);
const esc = (s) => String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const bytes = (n) => {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").replace(/\..*/, " UTC") : "–");
const COLORS = ["#2f6fdf", "#e0672b", "#2a9d55", "#a24ac2", "#c9a31a", "#d1345b", "#3aa8b5"];

function facts(el, rows) {
  el.innerHTML = rows.map(([k, v, id]) =>
    `<dt>${esc(k)}</dt><dd${id ? ` id="${id}"` : ""}>${v}</dd>`).join("");
}

// --- SVG line chart --------------------------------------------------------------------
// series: [{name, points: [[x, y], ...]}]; y null = gap. xfmt formats the x ticks.
function lineChart(svg, series, opts = {}) {
  const W = 360, H = 180, L = 44, R = 8, T = 10, B = 26;
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  if (!pts.length) {
    svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" text-anchor="middle" class="empty">no data yet</text>`;
    return;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [opts.yMin !== undefined ? opts.yMin : Math.min(...pts.map((p) => p[1])),
    opts.yMax !== undefined ? opts.yMax : Math.max(...pts.map((p) => p[1]))];
  if (opts.yMin === undefined && y0 > 0 && y0 < 0.5 * y1) y0 = 0;
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) {
    const pad = (Math.abs(y0) || 1) * 0.1;
    if (opts.yMin !== undefined) y1 = y0 + (y0 ? pad : 1); else { y1 = y0 + pad; y0 -= pad; }
  }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const fmt = opts.yfmt || ((v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)));
  const xfmt = opts.xfmt || ((v) => String(Math.round(v)));
  let out = "";
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    out += `<line class="grid" x1="${L}" x2="${W - R}" y1="${sy(y)}" y2="${sy(y)}"/>`;
    out += `<text class="tick" x="${L - 4}" y="${sy(y) + 3}" text-anchor="end">${esc(fmt(y))}</text>`;
  }
  for (let i = 0; i <= 3; i++) {
    const x = x0 + ((x1 - x0) * i) / 3;
    out += `<text class="tick" x="${sx(x)}" y="${H - 8}" text-anchor="middle">${esc(xfmt(x))}</text>`;
  }
  series.forEach((s, n) => {
    let d = "", pen = false;
    for (const [x, y] of s.points) {
      if (y === null || y === undefined) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
      pen = true;
    }
    const color = s.color || COLORS[n % COLORS.length];
    out += `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.8"><title>${esc(s.name)}</title></path>`;
    if (series.length > 1) {
      out += `<text class="key" x="${L + 6 + n * 90}" y="${T + 10}" fill="${color}">${esc(s.name)}</text>`;
    }
  });
  svg.innerHTML = out;
}

// --- Model panel -----------------------------------------------------------------------
async function loadModel() {
  const m = await get("/ui/api/model");
  $("head-version").textContent = m.version;
  const ds = m.dataset || {};
  const ix = m.index || {};
  const r = m.recall || {};
  const params = Object.entries(ix.params || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  facts($("model-facts"), [
    ["version", `<code>${esc(m.version)}</code>`, "model-version"],
    ["dataset", `${esc(ds.name)} <span class="muted">${esc(ds.source || "")}</span>`, "model-dataset"],
    ["data", `${(ds.n_users || 0).toLocaleString()} users · ${(ds.n_items || 0).toLocaleString()} items · ${(ds.n_interactions || 0).toLocaleString()} interactions`],
    ["trained", esc(when(m.created_at)), "model-trained"],
    ["model", `${esc(m.selected)} · ${esc(m.model.encoder)}, dim ${m.model.dim} × ${m.model.members} member(s), max_len ${m.model.max_len}`],
    ["index", `<b id="model-index-kind">${esc(ix.kind)}</b> ${esc(params)}${ix.normalized ? " (cosine)" : ""} · v${ix.version}`],
    ["index size", `<span id="model-index-items">${(ix.active || 0).toLocaleString()}</span> active of ${(ix.items || 0).toLocaleString()} rows · ${bytes(ix.bytes || 0)}${ix.tombstones ? ` · ${ix.tombstones} tombstones` : ""}`],
    ["measured recall", `<span id="model-recall">${r.window_recall === null ? "–" : num(r.window_recall, 4)}</span> <span class="muted">recall@k of ${r.window_checks} sampled live searches re-run exactly (ANN recall panel)</span>`],
  ]);
  // eval report: a row per model and split
  const keys = m.metric_keys;
  let html = `<tr><th>model</th><th>split</th>${keys.map((k) => `<th>${esc(k)}</th>`).join("")}</tr>`;
  for (const [name, entry] of Object.entries(m.report)) {
    for (const split of ["valid", "test"]) {
      const cls = name === m.selected ? ' class="selected"' : "";
      html += `<tr${cls}><td>${split === "valid" ? esc(name) : ""}</td><td>${split === "valid" ? "validation" : "test"}</td>` +
        keys.map((k) => `<td>${num(entry[split][k], 4)}</td>`).join("") + "</tr>";
    }
  }
  $("report-table").innerHTML = html;
  const skipped = Object.entries(m.skipped_baselines || {});
  $("report-skipped").textContent = skipped.length ? `skipped: ${skipped.map(([k, v]) => `${k} (${v})`).join("; ")}` : "";
  if (m.history) {
    const names = Object.keys(m.history);
    lineChart($("curve-loss"), names.map((n) => ({ name: n, points: m.history[n].epoch.map((e, i) => [e, m.history[n].loss[i]]) })));
    lineChart($("curve-ndcg"), names.map((n) => ({ name: n, points: m.history[n].epoch.map((e, i) => [e, m.history[n].valid_ndcg10[i]]) })));
  } else if (m.has_curve_png) {
    // older bundles: no per-epoch numbers, only the PNG
    fetch(ROOT + "/ui/api/curve.png", { headers: headers() }).then((r) => r.blob()).then((b) => {
      const fig = $("curve-loss").parentNode.parentNode;
      fig.innerHTML = `<img alt="training curve" src="${URL.createObjectURL(b)}">`;
    });
  }
  return m;
}

// --- Live, exposure, recall panels ------------------------------------------------------
const clock = (t) => new Date(t * 1000).toISOString().slice(11, 19);

async function loadLive() {
  const live = await get("/ui/api/live?window_s=60");
  const s = live.summary;
  $("live-covers").textContent = `${live.workers}; last ${Math.round(live.window_s)} s, sampled every ${live.interval_s} s, series of ${Math.round(live.history_s / 60)} min`;
  $("live-rps").textContent = s ? num(s.rps, 2) : "–";
  $("live-p50").textContent = s ? ms(s.p50_ms) : "–";
  $("live-p99").textContent = s ? ms(s.p99_ms) : "–";
  $("live-hit").textContent = s ? pct(s.cache_hit_rate) : "–";
  $("live-4xx").textContent = s ? num(s.errors_4xx_per_s, 2) : "–";
  $("live-5xx").textContent = s ? num(s.errors_5xx_per_s, 2) : "–";
  const P = live.points;
  lineChart($("chart-rps"), [{ name: "requests/s", points: P.map((p) => [p.t, p.rps]) }], { xfmt: clock, yMin: 0 });
  lineChart($("chart-latency"), [
    { name: "p50", points: P.map((p) => [p.t, p.p50_ms]) },
    { name: "p99", points: P.map((p) => [p.t, p.p99_ms]) },
  ], { xfmt: clock, yMin: 0 });
  lineChart($("chart-errors"), [
    { name: "4xx/s", points: P.map((p) => [p.t, p.errors_4xx_per_s]), color: COLORS[4] },
    { name: "5xx/s", points: P.map((p) => [p.t, p.errors_5xx_per_s]), color: COLORS[5] },
  ], { xfmt: clock, yMin: 0 });
  lineChart($("chart-recall"), [{ name: "recall", points: P.map((p) => [p.t, p.recall]) }], { xfmt: clock });
  const mix = (s && s.strategy_share) || {};
  const names = Object.keys(mix).sort();
  $("strategy-covers").textContent = "(share of /recommend answers, last 60 s)";
  $("strategy-bar").innerHTML = names.map((n, i) =>
    `<span style="width:${100 * mix[n]}%;background:${COLORS[i % COLORS.length]}" title="${esc(n)} ${pct(mix[n])}"></span>`).join("");
  $("strategy-legend").innerHTML = names.length
    ? names.map((n, i) => `<span data-strategy="${esc(n)}"><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(n)} ${pct(mix[n])}</span>`).join("")
    : '<span class="muted">no /recommend answers in the last minute</span>';
  return live;
}

async function loadExposure() {
  const e = await get("/ui/api/exposure");
  $("exposure-covers").textContent = `(last ${e.answers} answers, at most ${e.window_answers} per worker)`;
  $("exposure-coverage").textContent = e.answers ? pct(e.coverage) : "–";
  $("exposure-gini").textContent = e.answers ? num(e.gini, 3) : "–";
  $("exposure-lift").textContent = e.popularity_lift === null ? "–" : `${num(e.popularity_lift, 2)}×`;
  $("exposure-detail").textContent = `${e.distinct} of ${e.catalog} items served in ${e.impressions} impressions; ` +
    `mean popularity served ${num(e.served_mean_popularity, 1)} vs catalog ${num(e.catalog_mean_popularity, 1)} interactions. Most served:`;
  $("exposure-top").innerHTML = e.top.map((it) =>
    `<li><a href="#/item/${encodeURIComponent(it.item_id)}">${esc(it.title || it.item_id)}</a> <span class="muted">${it.impressions}</span></li>`).join("");
}

async function loadRecall() {
  const r = await get("/ui/api/recall");
  $("recall-covers").textContent = r.sample > 0
    ? `(${r.index} index; ${pct(r.sample, 2)} of unfiltered searches re-run exactly, last ${Math.round(r.window_s || 0)} s)`
    : "(off: ANN_RECALL_SAMPLE=0)";
  $("recall-window").textContent = num(r.window_recall, 4);
  $("recall-checks").textContent = String(r.window_checks);
  $("recall-total").textContent = r.total_recall === null ? "–" : `${num(r.total_recall, 4)} (${r.total_checks})`;
  const mr = $("model-recall");
  if (mr) mr.textContent = num(r.window_recall, 4);
}

// --- Try it ------------------------------------------------------------------------------
async function loadSchema() {
  const s = await get("/ui/api/schema");
  state.schema = s;
  const box = $("try-features");
  box.innerHTML = "<legend>user features</legend>" + s.features.map((f) => {
    const id = `try-f-${f.name}`;
    if (f.kind === "categorical") {
      return `<label>${esc(f.name)} <select id="${id}" data-feature="${esc(f.name)}" data-kind="categorical"><option value="">(unknown)</option>` +
        f.values.map((v) => `<option>${esc(v)}</option>`).join("") + "</select></label>";
    }
    if (f.kind === "bucket") {
      return `<label>${esc(f.name)} <input id="${id}" type="number" step="any" data-feature="${esc(f.name)}" data-kind="bucket" placeholder="${f.boundaries[0]}…${f.boundaries[f.boundaries.length - 1]}"></label>`;
    }
    return `<label>${esc(f.name)} <input id="${id}" data-feature="${esc(f.name)}" data-kind="multi" placeholder="comma-separated"></label>`;
  }).join("");
  if (!s.features.length) box.innerHTML += '<span class="muted">this model has no user features</span>';
  $("try-k").max = s.max_k;
  $("user-examples").innerHTML = s.example_users.length
    ? "e.g. " + s.example_users.map((u) => `<a href="#/user/${encodeURIComponent(u)}">${esc(u)}</a>`).join(", ")
    : "";
}

function debounce(fn, wait) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), wait); };
}

async function searchItems(q) {
  if (!q.trim()) return [];
  return (await get(`/ui/api/search?q=${encodeURIComponent(q)}&limit=10`)).items;
}

function renderRecent() {
  $("try-recent").innerHTML = state.recent.map((it, n) =>
    `<span class="chip" data-item="${esc(it.item_id)}">${esc(it.title || it.item_id)} <button type="button" data-remove="${n}" title="remove">×</button></span>`).join("") ||
    '<span class="muted">none: search above and click an item</span>';
}

$("try-recent").addEventListener("click", (ev) => {
  const n = ev.target.dataset.remove;
  if (n !== undefined) { state.recent.splice(Number(n), 1); renderRecent(); }
});

$("try-item-search").addEventListener("input", debounce(async (ev) => {
  const items = await searchItems(ev.target.value);
  $("try-item-results").innerHTML = items.map((it) =>
    `<li><button type="button" data-item="${esc(it.item_id)}" data-title="${esc(it.title || "")}">${esc(it.title || it.item_id)} <span class="muted">${esc(it.item_id)} · ${esc(it.genres.join(", "))}</span></button></li>`).join("");
}, 200));

$("try-item-results").addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-item]");
  if (!b) return;
  state.recent.push({ item_id: b.dataset.item, title: b.dataset.title });
  renderRecent();
  $("try-item-results").innerHTML = "";
  $("try-item-search").value = "";
});

function tryBody() {
  const body = {};
  const features = {};
  document.querySelectorAll("[data-feature]").forEach((el) => {
    if (el.value === "") return;
    const kind = el.dataset.kind;
    features[el.dataset.feature] = kind === "bucket" ? Number(el.value)
      : kind === "multi" ? el.value.split(",").map((v) => v.trim()).filter(Boolean) : el.value;
  });
  if (Object.keys(features).length) body.features = features;
  if (state.recent.length) body.recent_items = state.recent.map((it) => it.item_id);
  const user = $("try-user").value.trim();
  if (user) body.user_id = user;
  body.k = Number($("try-k").value) || 10;
  return body;
}

function curl(path, body) {
  const url = new URL(ROOT + path, location.href).href;
  const q = (s) => `'${s.replace(/'/g, "'\\''")}'`;
  let out = `curl -s -X POST ${q(url)}`;
  if (state.key) out += ` -H "X-API-Key: $API_KEY"`;
  out += ` -H 'Content-Type: application/json' -d ${q(JSON.stringify(body))}`;
  return out;
}

function itemRows(items) {
  return "<tr><th>#</th><th>item</th><th>title</th><th>genres</th><th>score</th></tr>" + items.map((it, n) =>
    `<tr><td>${n + 1}</td><td><a href="#/item/${encodeURIComponent(it.item_id)}">${esc(it.item_id)}</a></td><td>${esc(it.title)}</td>` +
    `<td>${esc((it.genres || []).join(", "))}</td><td>${it.score === null ? "–" : num(it.score, 4)}</td></tr>`).join("");
}

$("try-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = tryBody();
  $("try-error").hidden = true;
  try {
    const a = await call("POST", "/recommend", body);
    $("try-strategy").textContent = a.strategy;
    $("try-cache").textContent = a.cache;
    $("try-version").textContent = a.model_version;
    const notes = [...a.warnings, ...a.unknown_items.map((i) => `unknown item ${i}`),
      ...Object.keys(a.unknown_features).map((f) => `unseen value of ${f}`)];
    $("try-warnings").textContent = notes.length ? "· " + notes.join("; ") : "";
    $("try-items").innerHTML = itemRows(a.items);
    $("try-curl").textContent = curl("/recommend", body);
    $("try-answer").hidden = false;
  } catch (e) {
    $("try-error").textContent = e.message;
    $("try-error").hidden = false;
  }
});

$("try-copy").addEventListener("click", async () => {
  const text = $("try-curl").textContent;
  try { await navigator.clipboard.writeText(text); $("try-copy").textContent = "copied"; } catch (e) {
    const range = document.createRange(); range.selectNodeContents($("try-curl"));
    const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range);
    $("try-copy").textContent = "selected: press Ctrl+C";
  }
  setTimeout(() => { $("try-copy").textContent = "copy"; }, 2000);
});

// --- Items and users ---------------------------------------------------------------------
$("item-search").addEventListener("input", debounce(async (ev) => {
  const items = await searchItems(ev.target.value);
  $("item-results").innerHTML = items.map((it) =>
    `<li><a href="#/item/${encodeURIComponent(it.item_id)}">${esc(it.title || it.item_id)}</a> <span class="muted">${esc(it.item_id)} · ${esc(it.genres.join(", "))}</span></li>`).join("") ||
    (ev.target.value.trim() ? '<li class="muted">no item matches</li>' : "");
}, 200));

async function showItem(id) {
  const page = $("item-page");
  try {
    const it = await get(`/items/${encodeURIComponent(id)}`);
    const sim = await get(`/similar-items/${encodeURIComponent(id)}?k=10`);
    $("item-title").textContent = it.title || it.item_id;
    facts($("item-facts"), [
      ["id", `<code>${esc(it.item_id)}</code>`, "item-id"],
      ["genres", esc(it.genres.join(", ")) || "–"],
      ["active", it.active ? "yes" : "no (removed)"],
    ]);
    $("item-similar").innerHTML = itemRows(sim.items);
  } catch (e) {
    $("item-title").textContent = `item ${id}: ${e.message}`;
    $("item-facts").innerHTML = "";
    $("item-similar").innerHTML = "";
  }
  page.hidden = false;
  $("panel-items").scrollIntoView({ block: "start" });
}

async function showUser(id) {
  $("user-id").value = id;
  $("user-error").hidden = true;
  try {
    const u = await get(`/ui/api/users/${encodeURIComponent(id)}`);
    const rec = await call("POST", "/recommend", { user_id: id, k: 10 });
    $("user-history-note").textContent = `(${u.bundle_history} from the bundle + ${u.events} events, newest last)`;
    $("user-history").innerHTML = u.history.map((it) =>
      `<li><a href="#/item/${encodeURIComponent(it.item_id)}">${esc(it.title || it.item_id)}</a></li>`).join("");
    $("user-rec-note").textContent = `(strategy ${rec.strategy}, cache ${rec.cache})`;
    $("user-recs").innerHTML = rec.items.map((it) =>
      `<li><a href="#/item/${encodeURIComponent(it.item_id)}">${esc(it.title || it.item_id)}</a> <span class="muted">${num(it.score, 3)}</span></li>`).join("");
    $("user-page").hidden = false;
  } catch (e) {
    $("user-error").textContent = e.message;
    $("user-error").hidden = false;
    $("user-page").hidden = true;
  }
  $("panel-items").scrollIntoView({ block: "start" });
}

$("user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = $("user-id").value.trim();
  if (id) location.hash = `#/user/${encodeURIComponent(id)}`;
});

function route() {
  const m = location.hash.match(/^#\/(item|user)\/(.+)$/);
  if (!m) return;
  const id = decodeURIComponent(m[2]);
  if (m[1] === "item") showItem(id); else showUser(id);
}
window.addEventListener("hashchange", route);

// --- refresh loop ------------------------------------------------------------------------
async function refresh() {
  const results = await Promise.allSettled([loadLive(), loadExposure(), loadRecall()]);
  const failed = results.filter((r) => r.status === "rejected");
  $("head-status").textContent = failed.length ? `· ${failed[0].reason.message}` : `· updated ${new Date().toLocaleTimeString()}`;
  const live = results[0].status === "fulfilled" ? results[0].value : null;
  setTimeout(refresh, 1000 * Math.max(1, live ? live.interval_s : 2));
}

async function start() {
  $("forget-key").hidden = !state.key;
  renderRecent();
  try {
    await loadModel();
    await loadSchema();
  } catch (e) {
    $("head-status").textContent = `· ${e.message}`;
  }
  document.body.dataset.ready = "1";
  route();
  refresh();
  setInterval(() => loadModel().catch(() => {}), 30000);
}
start();
