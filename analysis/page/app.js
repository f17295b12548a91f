// The phase-diagram page (analysis/page): draws the diagram of the chosen view with Plotly,
// reclassifies every cell when a threshold moves, and opens a clicked cell's curves.
// The classifier below is analysis/phases.py `_classify_row` rule for rule, and the
// inference of a refined sweep's untrained cells is analysis/refine.py `infer`'s vote;
// tests/test_report_page.py checks both against Python in a real browser.
"use strict";

const DATA = JSON.parse(document.getElementById("page-data").textContent);
const POOLED = -1;
const NAMES = DATA.threshold_names;
const LABELS = {log_top_eigenvalue: "ln λmax", mc: "mc", cka: "CKA", train_loss: "train loss"};

const state = {choice: DATA.selectors.map(() => POOLED), tab: "phase", thresholds: null, cell: null};
const blocks = new Map();  // curve block number -> parsed block (parsed on first use)

function num(v) { return v === null || v === undefined ? NaN : v; }
function fmt(v, digits = 3) { return Number.isFinite(v) ? Number(v.toPrecision(digits)).toString() : "–"; }
function signed(v) { return (v > 0 ? "+" : "") + fmt(v); }

// ---------------------------------------------------------------- the classifier

// Phi(z) for the confidence shown (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7); the
// rule "within one spread" is decided on the margin itself, z < 1, as Phi(z) < Phi(1).
function phi(z) {
  const t = 1 / (1 + 0.3275911 * z / Math.SQRT2);
  const erf = 1 - t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    * Math.exp(-z * z / 2);
  return 0.5 * (1 + erf);
}

// analysis.phases._decide: value > threshold, with the margin in spreads.
function decide(value, threshold, spread) {
  const above = value > threshold;
  if (!Number.isFinite(spread)) return {above, confidence: 1, unsure: false, known: false};
  if (spread === 0) return {above, confidence: value !== threshold ? 1 : 0.5, unsure: value === threshold, known: true};
  const z = Math.abs(value - threshold) / spread;
  return {above, confidence: phi(z), unsure: z < 1, known: true};
}

// analysis.phases._classify_row on one cell (an object of its columns).
function classifyCell(c, t) {
  const get = (name) => num(c[name]);
  if (get("ok") * 2 < get("models")) return {phase: "diverged", confidence: 1, uncertain: false};
  let sharp;
  if (Number.isFinite(get("log_top_eigenvalue"))) {
    sharp = decide(get("log_top_eigenvalue"), t.log_top_eigenvalue, get("log_top_eigenvalue_std"));
  } else if (Number.isFinite(get("log_train_loss"))) {
    sharp = decide(get("log_train_loss"), Math.log(t.train_loss), get("log_train_loss_std"));
  } else {
    return {phase: "unclassified", confidence: NaN, uncertain: false};
  }
  if (!Number.isFinite(get("mc_mean"))) return {phase: "unclassified", confidence: NaN, uncertain: false};
  const mcSpread = get("mc_pairs") >= 2 ? get("mc_std") : get("train_err_std");
  const connected = decide(get("mc_mean"), t.mc, mcSpread);
  const rules = [sharp, connected];
  let phase;
  if (sharp.above) phase = connected.above ? "II" : "I";
  else if (!connected.above) phase = "III";
  else if (Number.isFinite(get("cka_softmax_mean"))) {
    const similar = decide(get("cka_softmax_mean"), t.cka, get("cka_softmax_std"));
    rules.push(similar);
    phase = similar.above ? "IV-B" : "IV-A";
  } else phase = "IV";
  return {phase, confidence: Math.min(...rules.map((r) => r.confidence)),
          uncertain: DATA.phases.includes(phase) && rules.some((r) => r.unsure)};
}

function isclose(a, b) { return Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(a), Math.abs(b)); }

// analysis.refine.infer for one untrained cell: its ring's weighted vote, ties broken by
// the share of models that finished, then by the phase of the interpolated metrics.
function inferCell(inference, results, t) {
  const votes = new Map();
  inference.ring.forEach((r, k) => votes.set(results[r].phase, (votes.get(results[r].phase) || 0) + inference.weights[k]));
  const best = Math.max(...votes.values());
  const tied = [...votes.keys()].filter((p) => isclose(votes.get(p), best)).sort();
  let phase = tied[0];
  if (tied.length > 1) {
    if (tied.includes("diverged") && !(num(inference.finished) > DATA.finished)) phase = "diverged";
    else {
      const phases = tied.filter((p) => p !== "diverged");
      const estimate = classifyCell({...inference.estimate, ok: 1, models: 1}, t).phase;
      phase = phases.length === 1 ? phases[0] : phases.includes(estimate) ? estimate : phases[0];
    }
  }
  const ring = inference.ring.map((r) => results[r]);
  return {phase, confidence: NaN,
          uncertain: new Set(ring.map((r) => r.phase)).size > 1 || ring.some((r) => r.uncertain)};
}

function classifyView(view, t) {
  const cells = view.cells, n = cells.xi.length, results = new Array(n);
  const row = (i) => Object.fromEntries(Object.keys(cells).map((k) => [k, cells[k][i]]));
  for (let i = 0; i < n; i++) if (!cells.inferred[i]) results[i] = classifyCell(row(i), t);
  for (let i = 0; i < n; i++) if (cells.inferred[i]) results[i] = inferCell(view.infer[i], results, t);
  return results;
}

// ---------------------------------------------------------------- views and controls

function currentView() {
  return DATA.views.find((v) => v.choice.every((c, i) => c === state.choice[i]));
}

function buildSelectors() {
  const box = document.getElementById("selectors");
  DATA.selectors.forEach((s, i) => {
    const options = [`<option value="${POOLED}">pooled</option>`]
      .concat(s.labels.map((l, j) => `<option value="${j}">${l}</option>`)).join("");
    box.insertAdjacentHTML("beforeend", `<label>${s.axis} <select id="select-${s.axis}">${options}</select></label>`);
    document.getElementById(`select-${s.axis}`).addEventListener("change", (e) => {
      state.choice[i] = Number(e.target.value);
      state.thresholds = {...currentView().thresholds.values};
      syncThresholds();
      render();
    });
  });
}

function buildThresholds() {
  const box = document.getElementById("thresholds");
  for (const name of NAMES) {
    box.insertAdjacentHTML("beforeend", `<span class="threshold"><label for="threshold-${name}">${LABELS[name]}</label>
      <input type="number" step="any" id="threshold-${name}"><input type="range" id="range-${name}"></span>`);
    const input = document.getElementById(`threshold-${name}`), range = document.getElementById(`range-${name}`);
    input.addEventListener("input", () => {
      const value = Number(input.value);
      if (input.value === "" || !Number.isFinite(value) || (name === "train_loss" && value <= 0)) return;
      state.thresholds[name] = value;
      range.value = value;
      render();
    });
    range.addEventListener("input", () => {
      state.thresholds[name] = Number(range.value);
      input.value = range.value;
      render();
    });
  }
  box.insertAdjacentHTML("beforeend", `<button id="reset">reset</button>`);
  document.getElementById("reset").addEventListener("click", () => {
    state.thresholds = {...currentView().thresholds.values};
    syncThresholds();
    render();
  });
}

// A slider spans the view's values of the metric its threshold is compared with.
function rangeOf(view, name) {
  const column = {log_top_eigenvalue: "log_top_eigenvalue", mc: "mc_mean", cka: "cka_softmax_mean",
                  train_loss: "train_loss_mean"}[name];
  const values = (view.cells[column] || []).filter((v) => v !== null).concat([state.thresholds[name]]);
  const lo = Math.min(...values), hi = Math.max(...values), pad = (hi - lo) * 0.05 || 1;
  return [name === "train_loss" ? Math.max(lo - pad, hi * 1e-6) : lo - pad, hi + pad];
}

function syncThresholds() {
  const view = currentView();
  for (const name of NAMES) {
    const input = document.getElementById(`threshold-${name}`), range = document.getElementById(`range-${name}`);
    const [lo, hi] = view.cells ? rangeOf(view, name) : [0, 1];
    Object.assign(range, {min: lo, max: hi, step: (hi - lo) / 200});
    input.value = range.value = state.thresholds[name];
    input.title = range.title = view.thresholds ? view.thresholds.sources[name] : "";
  }
}

function commandLine(view) {
  const fixes = Object.entries(view.fix).map(([k, v]) => ` --fix ${k}=${v}`).join("");
  const flags = NAMES.map((n) => ` --threshold ${n}=${String(state.thresholds[n])}`).join("");
  return DATA.command + fixes + flags;
}

function buildTabs() {
  const tabs = [["phase", "phases"]].concat(DATA.heatmaps.map(([column, , title]) => [column, title]));
  const nav = document.getElementById("tabs");
  for (const [key, title] of tabs) {
    nav.insertAdjacentHTML("beforeend", `<button data-tab="${key}">${title}</button>`);
  }
  nav.addEventListener("click", (e) => {
    if (!e.target.dataset.tab) return;
    state.tab = e.target.dataset.tab;
    render();
  });
}

// ---------------------------------------------------------------- the diagram

function hoverText(view, i, result) {
  const c = view.cells, t = state.thresholds, get = (k) => num(c[k][i]);
  const lines = [`<b>${DATA.x}=${DATA.xs[c.xi[i]]}, ${DATA.y}=${DATA.ys[c.yi[i]]}</b>`];
  if (c.inferred[i]) {
    lines.push(`inferred: ${result.phase}${result.uncertain ? "?" : ""} (not trained; ${c.note[i]})`);
    return lines.join("<br>");
  }
  lines.push(`phase ${result.phase}${result.uncertain ? "?" : ""}` +
             (Number.isFinite(result.confidence) ? ` (confidence ${fmt(result.confidence, 2)})` : ""));
  lines.push(`models ${get("models")} (${get("ok")} ok, ${get("diverged")} diverged), pairs ${get("pairs")} ` +
             `(${get("mc_pairs")} with a curve)`);
  const rule = (label, value, spread, threshold) => {
    const margin = value - threshold;
    const spreads = Number.isFinite(spread) && spread > 0 ? `, ${fmt(Math.abs(margin) / spread, 2)} spreads` : "";
    return `${label} ${fmt(value)} ± ${fmt(spread, 2)} · threshold ${fmt(threshold)}: ${signed(margin)}${spreads}`;
  };
  if (Number.isFinite(get("log_top_eigenvalue"))) {
    lines.push(rule("ln λmax", get("log_top_eigenvalue"), get("log_top_eigenvalue_std"), t.log_top_eigenvalue));
  } else if (Number.isFinite(get("log_train_loss"))) {
    lines.push(rule("ln train loss", get("log_train_loss"), get("log_train_loss_std"), Math.log(t.train_loss)));
  }
  const mcSpread = get("mc_pairs") >= 2 ? get("mc_std") : get("train_err_std");
  lines.push(rule("mc", get("mc_mean"), mcSpread, t.mc));
  lines.push(rule("CKA", get("cka_softmax_mean"), get("cka_softmax_std"), t.cka));
  lines.push(`test acc ${fmt(get("test_acc_mean"))} ± ${fmt(get("test_acc_std"), 2)}, ` +
             `train loss ${fmt(get("train_loss_mean"))} ± ${fmt(get("train_loss_std"), 2)}`);
  lines.push(`ln trace ${fmt(get("log_trace"))} ± ${fmt(get("log_trace_std"), 2)}, ` +
             `L2 ${fmt(get("l2_distance_mean"))} ± ${fmt(get("l2_distance_std"), 2)}`);
  if (c.note[i]) lines.push(`<i>${c.note[i]}</i>`);
  return lines.join("<br>");
}

function grid(fill) {
  return DATA.ys.map(() => DATA.xs.map(() => fill));
}

function render() {
  const view = currentView();
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === state.tab));
  document.getElementById("command-line").textContent = view.cells ? commandLine(view) : "";
  if (!view.cells) {
    Plotly.purge("diagram");
    document.getElementById("counts").textContent = `no models in this view (${view.empty})`;
    return Promise.resolve();
  }
  const results = classifyView(view, state.thresholds);
  state.results = results;
  const c = view.cells, z = grid(null), text = grid(""), hover = grid("");
  const codes = Object.fromEntries(Object.keys(DATA.colors).map((p, k) => [p, k]));
  results.forEach((r, i) => {
    const [yi, xi] = [c.yi[i], c.xi[i]];
    hover[yi][xi] = hoverText(view, i, r);
    if (state.tab === "phase") {
      const label = (r.phase === "diverged" ? "div." : r.phase === "unclassified" ? "–" : r.phase) + (r.uncertain ? "?" : "");
      z[yi][xi] = codes[r.phase];
      text[yi][xi] = c.inferred[i] ? `(${label})` : label;
    } else {
      z[yi][xi] = num(c[state.tab][i]);
      text[yi][xi] = fmt(num(c[state.tab][i]), 2);
    }
  });
  const colors = Object.values(DATA.colors);
  const heatmap = {type: "heatmap", x: DATA.xs.map((_, j) => j), y: DATA.ys.map((_, j) => j), z, text,
                   hovertext: hover, hoverinfo: "text", texttemplate: "%{text}", xgap: 1, ygap: 1,
                   textfont: {size: 10}};
  if (state.tab === "phase") {
    Object.assign(heatmap, {zmin: -0.5, zmax: colors.length - 0.5, showscale: false,
                            colorscale: colors.flatMap((col, k) => [[k / colors.length, col], [(k + 1) / colors.length, col]])});
  } else {
    Object.assign(heatmap, {colorscale: "Viridis", colorbar: {thickness: 12}});
  }
  const inferred = results.map((_, i) => i).filter((i) => c.inferred[i]);
  const hatch = {type: "bar", x: inferred.map((i) => c.xi[i]), y: inferred.map(() => 1),
                 base: inferred.map((i) => c.yi[i] - 0.5), width: 1, hoverinfo: "skip", showlegend: false,
                 marker: {color: "rgba(255,255,255,0.3)", line: {width: 0},
                          pattern: {shape: "/", fgcolor: "rgba(90,90,90,0.55)", size: 7, solidity: 0.15}}};
  const axis = (name, labels) => ({title: {text: name}, tickvals: labels.map((_, j) => j), ticktext: labels,
                                   showgrid: false, zeroline: false});
  const title = state.tab === "phase" ? `${DATA.title}` : DATA.heatmaps.find((h) => h[0] === state.tab)[2];
  const layout = {title: {text: title, font: {size: 14}}, margin: {t: 40, l: 70, r: 20, b: 50}, barmode: "overlay",
                  xaxis: axis(DATA.x, DATA.xs),
                  yaxis: {...axis(DATA.y, DATA.ys), autorange: "reversed"}, hovermode: "closest"};
  const counts = {};
  results.forEach((r) => { counts[r.phase] = (counts[r.phase] || 0) + 1; });
  const uncertain = results.filter((r) => r.uncertain).length;
  document.getElementById("counts").textContent = Object.entries(counts).map(([p, n]) => `${p} ${n}`).join(", ") +
    `; ${uncertain} uncertain (?)` + (inferred.length ? `; ${inferred.length} inferred (hatched, in parentheses)` : "");
  return Plotly.react("diagram", inferred.length ? [heatmap, hatch] : [heatmap], layout, {responsive: true});
}

function buildLegend() {
  document.getElementById("legend").innerHTML = Object.entries(DATA.colors)
    .map(([p, col]) => `<span><i style="background:${col}"></i>${p}</span>`).join("") +
    "<span>?: within one seed spread of a threshold</span><span>hatched: inferred, not trained</span>";
}

// ---------------------------------------------------------------- a cell's panel

function block(n) {
  if (!blocks.has(n)) {
    const element = document.getElementById(`curves-${n}`);
    blocks.set(n, element ? JSON.parse(element.textContent) : {h: {}, i: {}, b: {}});
  }
  return blocks.get(n);
}

function members(table, view, i) {
  const c = view.cells, out = [];
  for (let k = 0; k < table.xi.length; k++) {
    if (table.xi[k] !== c.xi[i] || table.yi[k] !== c.yi[i]) continue;
    if (state.choice.every((choice, s) => choice === POOLED || table.sel[s][k] === choice)) out.push(k);
  }
  return out;
}

function seedName(k) {
  const pooled = DATA.selectors.filter((_, s) => state.choice[s] === POOLED)
    .map((s) => `${s.axis}=${s.labels[DATA.models.sel[DATA.selectors.indexOf(s)][k]]}`);
  return `seed ${DATA.models.seed[k]}` + (pooled.length ? ` (${pooled.join(", ")})` : "");
}

function plot(id, traces, layout) {
  const element = document.getElementById(id);
  if (!traces.length) {
    Plotly.purge(element);
    element.innerHTML = `<div class="empty">${layout.title.text}: no records</div>`;
    return;
  }
  element.innerHTML = "";
  Plotly.newPlot(element, traces, {margin: {t: 36, l: 55, r: 50, b: 40}, legend: {font: {size: 9}}, ...layout},
                 {responsive: true});
}

const STAGE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

function openCell(i) {
  const view = currentView(), c = view.cells, M = DATA.models, P = DATA.pairs;
  state.cell = i;
  const models = members(M, view, i), pairs = members(P, view, i);
  const panel = document.getElementById("panel");
  panel.hidden = false;
  const result = state.results[i];
  document.getElementById("panel-title").textContent =
    `${DATA.x}=${DATA.xs[c.xi[i]]}, ${DATA.y}=${DATA.ys[c.yi[i]]}: ${result.phase}${result.uncertain ? "?" : ""}` +
    ` (${models.length} models, ${pairs.length} seed pairs)`;
  document.getElementById("panel-note").textContent = c.inferred[i] ? `not trained: ${c.note[i]}` :
    `training histories of more than ${DATA.history_points} epochs are drawn at ${DATA.history_points} evenly spaced epochs`;
  const history = [], full = [], stages = new Map(), bezier = [];
  const stageNames = [];
  for (const k of models) {
    const b = block(M.blob[k]), name = seedName(k);
    const h = b.h[k];
    if (h) {
      history.push({x: h[0], y: h[1], name: `${name} loss`, mode: "lines", legendgroup: name});
      if (h[2].length) history.push({x: h[0], y: h[2], name: `${name} acc`, mode: "lines", yaxis: "y2",
                                     line: {dash: "dot"}, legendgroup: name});
    }
    for (const [kind, group, split, t, loss] of b.i[k] || []) {
      const dash = split === "train" ? "solid" : "dash";
      if (kind === "interp_full") full.push({x: t, y: loss, name: `${name} ${split}`, mode: "lines", line: {dash}});
      else {  // one trace per stage and split, the models' lines joined by gaps: a pooled cell has dozens
        const label = kind === "interp_group" ? group : `${group} (others at init)`, key = `${label} ${split}`;
        if (!stageNames.includes(label)) stageNames.push(label);
        if (!stages.has(key)) {
          stages.set(key, {x: [], y: [], text: [], name: key, legendgroup: label, mode: "lines", opacity: 0.8,
                           line: {dash, color: STAGE_COLORS[stageNames.indexOf(label) % STAGE_COLORS.length], width: 1.2},
                           hovertemplate: `%{text} ${key}: %{y}<extra></extra>`});
        }
        const trace = stages.get(key);
        trace.x.push(...t, null);
        trace.y.push(...loss, null);
        trace.text.push(...t.map(() => name), "");
      }
    }
  }
  for (const k of pairs) {
    for (const [split, t, , err] of block(P.blob[k]).b[k] || []) {
      bezier.push({x: t, y: err, mode: "lines+markers", line: {dash: split === "train" ? "solid" : "dash"},
                   name: `seeds ${P.seed_a[k]}-${P.seed_b[k]} ${split}`});
    }
  }
  plot("plot-history", history, {title: {text: "training curves (per epoch)"}, xaxis: {title: {text: "epoch"}},
       yaxis: {title: {text: "train loss"}, type: "log"},
       yaxis2: {title: {text: "train acc"}, overlaying: "y", side: "right", range: [0, 1]}});
  plot("plot-interpolation", full, {title: {text: "interpolation θ0 → θT, full path (solid train, dashed test)"},
       xaxis: {title: {text: "α"}}, yaxis: {title: {text: "loss"}}});
  plot("plot-stages", [...stages.values()], {title: {text: "interpolation per stage (solid train, dashed test)"},
       xaxis: {title: {text: "α"}}, yaxis: {title: {text: "loss"}}});
  plot("plot-bezier", bezier, {title: {text: "Bezier curves of seed pairs (error along the curve)"},
       xaxis: {title: {text: "t"}}, yaxis: {title: {text: "error (%)"}}});
  const row = (cells) => `<tr>${cells.map((v) => `<td>${v}</td>`).join("")}</tr>`;
  document.getElementById("models-table").innerHTML =
    `<tr><th>model</th><th>status</th><th>train loss</th><th>train acc</th><th>test acc</th>` +
    `<th>Hessian λmax</th><th>Hessian trace</th></tr>` +
    models.map((k) => row([seedName(k), M.status[k], fmt(num(M.train_loss[k])), fmt(num(M.train_acc[k])),
                           fmt(num(M.test_acc[k])), fmt(num(M.hessian_top_eigenvalue[k])),
                           fmt(num(M.hessian_trace[k]))])).join("");
  document.getElementById("pairs-table").innerHTML =
    `<tr><th>seeds</th><th>status</th><th>mc</th><th>CKA</th><th>L2</th></tr>` +
    pairs.map((k) => row([`${P.seed_a[k]}-${P.seed_b[k]}`, P.status[k], fmt(num(P.mc[k])),
                          fmt(num(P.cka_softmax[k])), fmt(num(P.l2_distance[k]))])).join("");
}

// ---------------------------------------------------------------- start

function cellAt(xi, yi) {
  const c = currentView().cells;
  for (let i = 0; i < c.xi.length; i++) if (c.xi[i] === xi && c.yi[i] === yi) return i;
  return -1;
}

buildSelectors();
buildThresholds();
buildTabs();
buildLegend();
document.getElementById("meta").textContent = DATA.meta;
state.thresholds = {...currentView().thresholds.values};
syncThresholds();
render().then(() => {
  document.getElementById("diagram").on("plotly_click", (event) => {
    const i = cellAt(event.points[0].x, event.points[0].y);
    if (i >= 0) openCell(i);
  });
  window.phasePage.loadedMs = performance.now();
});

// What the browser test reads: the current view's cells as the page classifies them.
window.phasePage = {
  cells: () => {
    const c = currentView().cells;
    return state.results.map((r, i) => ({x: DATA.xs[c.xi[i]], y: DATA.ys[c.yi[i]], phase: r.phase,
                                         uncertain: r.uncertain, inferred: c.inferred[i]}));
  },
  thresholds: () => ({...state.thresholds}),
  loadedMs: null,
};
