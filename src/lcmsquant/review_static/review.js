// lcmsquant review: the workspace over /api (review_app.py). Plain JavaScript, no build step;
// plotly.js is served by the review itself. Every change goes to the server, which answers with
// the whole new state; the page only draws what it is given.
"use strict";

const TOKEN = document.querySelector('meta[name="review-token"]').content;
const $ = (id) => document.getElementById(id);
const ANALYST_KEY = "lcmsquant.review.analyst";
const POLL_MS = 2000;
const ROLE_SHORT = { quantifier: "quant", qualifier: "qual", internal_standard: "IS" };
const ROLE_COLOUR = { quantifier: "#1f5fa8", qualifier: "#7a4fa0", internal_standard: "#2a8a4a" };
const BOUNDARY = "#e8820c";
const NEIGHBOUR_SCALE_ABOVE = 3; // a neighbour more than 3x this trace's apex is drawn scaled to it

const S = {
  state: null, // the last /api/state
  byId: new Map(), // row id -> row
  filtered: [], // rows shown, in order
  selected: null, // row id
  chrom: null, // the last /api/chromatogram of the selected row
  chromSeq: 0,
  window: null, // {start, end, dirty}: the boundaries shown for the selected transition
  boundaryShapes: null, // {start: shape index, end: shape index}
  relayoutGuard: false,
  busy: false,
  tab: "curve",
  curveKey: null,
  timings: [], // per change: {server_ms, render_ms, total_ms} (benchmarks/review_speed.py reads them)
};
window.__review = S;

// ---------------------------------------------------------------------------------------------
// Talking to the server

async function api(path, body) {
  const options = { headers: { "X-Review-Token": TOKEN }, cache: "no-store" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`The review does not answer (${err.message}): is lcmsquant review still running?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const error = new Error(data && data.error ? data.error : `${response.status}: ${text.slice(0, 200)}`);
    error.problems = (data && data.problems) || [];
    throw error;
  }
  S.lastServerTiming = response.headers.get("Server-Timing") || "";
  return data;
}

function showMessage(text, kind = "info", problems = []) {
  const box = $("message");
  box.className = kind;
  box.hidden = false;
  $("message-text").textContent = text;
  const list = $("message-problems");
  list.replaceChildren(...problems.filter((p) => p !== text).map((p) => Object.assign(document.createElement("li"), { textContent: p })));
  clearTimeout(S.messageTimer);
  if (kind === "info") S.messageTimer = setTimeout(() => (box.hidden = true), 6000);
}

function showError(err) {
  showMessage(err.message || String(err), "error", err.problems || []);
}

function analystName() {
  return $("analyst").value.trim();
}

function rememberAnalyst(name) {
  $("analyst").value = name;
  try {
    localStorage.setItem(ANALYST_KEY, name);
  } catch (err) {
    /* private mode: the field keeps it */
  }
}

// ---------------------------------------------------------------------------------------------
// Formatting

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function fmtArea(v) {
  return v == null ? "" : Math.round(v).toLocaleString("en-US");
}
function fmt(v, digits = 3) {
  return v == null ? "" : Number(v).toFixed(digits);
}
function fmtSig(v, sig = 4) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return Number(v).toExponential(sig - 1);
  const text = Number(v).toPrecision(sig);
  return text.includes(".") && !text.includes("e") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}
// at most four digits: a clean standard's S/N runs to millions, which no cell holds
function fmtSn(v) {
  return v == null ? "" : v >= 9999.5 ? ">9999" : v >= 100 ? String(Math.round(v)) : fmtSig(v, 3);
}
function fmtPct(v) {
  return v == null ? "" : `${Number(v).toFixed(1)} %`;
}
// signed, one decimal; a deviation that rounds to zero is "0.0 %", not "-0.0 %" or "+0.0 %"
function fmtDeviation(dev) {
  const text = dev.toFixed(1);
  return Number(text) === 0 ? "0.0 %" : `${dev > 0 ? "+" : ""}${text} %`;
}
function shortHash(h) {
  return h ? h.slice(0, 12) : "";
}

function flagMeaning(flag) {
  return (S.flagMeanings && S.flagMeanings.get(flag)) || flag;
}
function badges(flags) {
  return flags.map((f) => `<span class="badge f-${esc(f)}" title="${esc(flagMeaning(f))}">${esc(f)}</span>`).join("");
}

// ---------------------------------------------------------------------------------------------
// State

function setState(state) {
  const first = S.state === null;
  S.state = state;
  S.byId = new Map(state.rows.map((r) => [r.id, r]));
  S.flagMeanings = new Map(state.flags.map((f) => [f.flag, f.meaning]));
  if (first) initFilters(state);
  if (!analystName() && state.analyst) rememberAnalyst(state.analyst);
  renderHeader();
  renderGrid();
  renderTabs();
  if (!S.selected || !S.byId.has(S.selected)) {
    select(first ? openingRow() : S.filtered.length ? S.filtered[0].id : null);
  } else {
    markSelected();
    updateControls();
    loadChromatogram();
  }
}

// Where the page opens: the first flagged row of a calibrator, QC or study sample, else the
// first calibrator's quantifier (a blank's flagged noise tells a reviewer little first)
function openingRow() {
  const rows = S.filtered;
  const measured = (r) => !["blank", "zero"].includes(r.sample_type);
  const row =
    rows.find((r) => isFlagged(r) && measured(r)) ||
    rows.find(isFlagged) ||
    rows.find((r) => r.sample_type === "calibrator" && r.role === "quantifier") ||
    rows[0];
  return row ? row.id : null;
}

async function reloadState() {
  setState(await api("/api/state"));
}

function renderHeader() {
  const st = S.state;
  $("batch").textContent = st.batch;
  $("batch").title = st.folder;
  $("hash").textContent = shortHash(st.results_sha256);
  $("verdict-chips").innerHTML = st.verdicts
    .map((v) => {
      const label = st.calibration.length > st.analytes.length ? `${v.analyte} · ${v.calibrator_set}` : v.analyte;
      const why = v.accepted ? "accepted" : `rejected: ${v.reasons.join("; ")}`;
      return `<span class="chip ${v.accepted ? "ok" : "bad"}" title="${esc(why)}">${esc(label)} ${v.accepted ? "✓" : "✗"}</span>`;
    })
    .join("");
  $("undo").disabled = !st.undo;
  $("redo").disabled = !st.redo;
  $("undo").title = st.undo ? `Undo: ${st.undo}` : "Nothing to undo";
  $("redo").title = st.redo ? `Redo: ${st.redo}` : "Nothing to redo";
  $("undo-what").textContent = st.undo ? `Undo: ${st.undo}` : st.redo ? `Redo: ${st.redo}` : "";
  $("undo-what").title = $("undo-what").textContent;
}

// ---------------------------------------------------------------------------------------------
// The peak review grid

function initFilters(st) {
  const add = (select, values, label = (v) => v) => {
    for (const v of values) select.add(new Option(label(v), v));
  };
  add($("f-type"), st.sample_types);
  add($("f-analyte"), [...st.analytes, ...st.internal_standards]);
  for (const id of ["f-flagged", "f-flag", "f-type", "f-analyte", "f-role"]) {
    $(id).addEventListener("change", () => {
      renderGrid();
      if (!S.filtered.some((r) => r.id === S.selected) && S.filtered.length) select(S.filtered[0].id);
      else markSelected();
    });
  }
}

const EXPECTED_EMPTY = new Set(["blank", "zero"]);

function isFlagged(row) {
  return row.flags.some((f) => {
    if (f === "MANUAL") return false;
    if (f === "NO_PEAK" && row.sample_type === "blank") return false;
    if (f === "NO_PEAK" && row.sample_type === "zero" && row.role !== "internal_standard") return false;
    return true;
  });
}

function rowPasses(row, filter) {
  if (filter.flagged && !isFlagged(row)) return false;
  if (filter.flag && !row.flags.includes(filter.flag)) return false;
  if (filter.type && row.sample_type !== filter.type) return false;
  if (filter.analyte && row.analyte !== filter.analyte) return false;
  if (filter.role && row.role !== filter.role) return false;
  return true;
}

function currentFilter() {
  return {
    flagged: $("f-flagged").checked,
    flag: $("f-flag").value,
    type: $("f-type").value,
    analyte: $("f-analyte").value,
    role: $("f-role").value,
  };
}

// The grid draws only the rows in view (and a few around): a 384-injection run has 3000+ rows,
// and laying all of them out took longer than the server's whole change.
const ROW_H = 19; // px, as review.css fixes it
const OVERSCAN = 12;

function renderGrid() {
  const filter = currentFilter();
  renderFlagOptions(filter);
  S.filtered = S.state.rows.filter((r) => rowPasses(r, filter));
  S.filteredIndex = new Map(S.filtered.map((r, i) => [r.id, i]));
  renderSlice(true);
  const flagged = S.state.rows.filter(isFlagged).length;
  $("row-count").textContent = `${S.filtered.length} of ${S.state.rows.length} rows · ${flagged} flagged`;
}

// The flag filter lists the flags the rows under the other filters carry, with their counts
// ("EDGE (12)"); a flag chosen stays listed (with 0) until another is chosen.
function renderFlagOptions(filter) {
  const others = { ...filter, flag: "" };
  const counts = new Map();
  for (const r of S.state.rows) {
    if (!rowPasses(r, others)) continue;
    for (const f of r.flags) counts.set(f, (counts.get(f) || 0) + 1);
  }
  const box = $("f-flag");
  const options = [new Option("Any flag", "")];
  for (const { flag } of S.state.flags) {
    const n = counts.get(flag) || 0;
    if (!n && flag !== filter.flag) continue;
    const option = new Option(`${flag} (${n})`, flag);
    option.title = flagMeaning(flag);
    options.push(option);
  }
  box.replaceChildren(...options);
  box.value = filter.flag;
}

// MANUAL last: the purple area already marks a manual peak, and a narrow cell cuts the flags at its end
function gridFlags(flags) {
  return [...flags.filter((f) => f !== "MANUAL"), ...flags.filter((f) => f === "MANUAL")];
}

function rowHtml(r) {
  const cls = (r.manual ? "manual " : "") + (r.id === S.selected ? "sel" : "");
  return (
    `<tr data-id="${esc(r.id)}" class="${cls}"><td class="num">${r.injection}</td><td title="${esc(r.file)}">${esc(r.sample_id)}</td>` +
    `<td>${esc(r.sample_type)}</td><td>${esc(r.level)}</td><td>${esc(r.analyte)}</td>` +
    `<td class="role" title="${esc(r.transition)}">${ROLE_SHORT[r.role] || esc(r.role)}</td>` +
    `<td class="num">${fmt(r.rt_min)}</td><td class="num area" data-area="${r.area ?? ""}">${fmtArea(r.area)}</td>` +
    `<td class="num"${r.sn != null && r.sn >= 9999.5 ? ` title="S/N ${Math.round(r.sn).toLocaleString("en-US")}"` : ""}>${fmtSn(r.sn)}</td><td class="flags" title="${esc(r.flags.join(", "))}">${badges(gridFlags(r.flags))}</td></tr>`
  );
}

function renderSlice(force) {
  const box = $("grid-scroll");
  const n = S.filtered.length;
  const first = Math.max(0, Math.floor(box.scrollTop / ROW_H) - OVERSCAN);
  const last = Math.min(n, Math.ceil((box.scrollTop + box.clientHeight) / ROW_H) + OVERSCAN);
  if (!force && S.gridSlice && S.gridSlice[0] === first && S.gridSlice[1] === last) return;
  S.gridSlice = [first, last];
  const html = [`<tr class="spacer" style="height:${first * ROW_H}px"></tr>`];
  for (let i = first; i < last; i++) html.push(rowHtml(S.filtered[i]));
  html.push(`<tr class="spacer" style="height:${(n - last) * ROW_H}px"></tr>`);
  $("grid-body").innerHTML = html.join("");
}

function markSelected() {
  const box = $("grid-scroll");
  const index = S.selected && S.filteredIndex ? S.filteredIndex.get(S.selected) : undefined;
  if (index !== undefined) {
    const head = box.querySelector("thead").offsetHeight;
    const top = index * ROW_H;
    if (top < box.scrollTop) box.scrollTop = top;
    else if (top + ROW_H + head > box.scrollTop + box.clientHeight) box.scrollTop = top + ROW_H + head - box.clientHeight;
    renderSlice(false);
  }
  const body = $("grid-body");
  const old = body.querySelector("tr.sel");
  if (old) old.classList.remove("sel");
  if (!S.selected) return;
  const tr = body.querySelector(`tr[data-id="${CSS.escape(S.selected)}"]`);
  if (tr) tr.classList.add("sel");
}

function select(id) {
  if (id !== S.selected) S.window = null;
  S.selected = id;
  markSelected();
  updateControls();
  followAnalyte();
  loadChromatogram();
}

// The Curve tab shows the selected row's analyte (and calibrator set); a curve picked by hand
// stays until a row of another analyte is selected.
function followAnalyte() {
  const row = selectedRow();
  if (!row || !S.state || row.analyte === S.curveAnalyte) return;
  S.curveAnalyte = row.analyte;
  const cals = S.state.calibration.filter((c) => c.analyte === row.analyte);
  const cal = cals.find((c) => c.calibrator_set === row.calibrator_set) || cals[0];
  if (cal && curveKeyOf(cal) !== S.curveKey) {
    S.curveKey = curveKeyOf(cal);
    renderCurve();
  }
}

function moveSelection(step) {
  if (!S.filtered.length) return;
  let i = S.filtered.findIndex((r) => r.id === S.selected);
  i = i < 0 ? 0 : Math.max(0, Math.min(S.filtered.length - 1, i + step));
  select(S.filtered[i].id);
}

function selectedRow() {
  return S.selected ? S.byId.get(S.selected) : null;
}

// ---------------------------------------------------------------------------------------------
// The chromatogram view

// Boundaries moved but not applied (S.window.dirty) stay when the same row is drawn again (a
// change elsewhere, another tab's); selecting another row or sending a change drops them.
async function loadChromatogram() {
  const row = selectedRow();
  const seq = ++S.chromSeq;
  if (!row) {
    Plotly.purge($("chart"));
    $("chart-title").textContent = "No row selected";
    return;
  }
  S.chromPending = true;
  try {
    const view = await api(`/api/chromatogram?injection=${row.injection}&transition=${encodeURIComponent(row.transition)}`);
    if (seq !== S.chromSeq) return; // another row was selected meanwhile
    S.chrom = view;
    const panel = view.panels.find((p) => p.transition === row.transition);
    const peak = (panel && panel.peak) || {};
    if (!(S.window && S.window.dirty)) S.window = defaultWindow(peak);
    drawChromatogram();
    updateControls();
    if (S.timingOfChart) {
      S.timingOfChart.timing.chart_ms = performance.now() - S.timingOfChart.t0;
      S.timingOfChart = null;
    }
  } catch (err) {
    if (seq === S.chromSeq) showError(err);
  } finally {
    if (seq === S.chromSeq) S.chromPending = false;
  }
}

function defaultWindow(peak) {
  if (peak.start_min != null && peak.end_min != null) return { start: peak.start_min, end: peak.end_min, dirty: false };
  const centre = peak.expected_rt_min ?? peak.rt_min ?? 1;
  return { start: Math.max(0, centre - 0.15), end: centre + 0.15, dirty: false };
}

function interp(time, intensity, t) {
  if (!time.length) return 0;
  if (t <= time[0]) return intensity[0];
  if (t >= time[time.length - 1]) return intensity[intensity.length - 1];
  let lo = 0;
  let hi = time.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (time[mid] <= t) lo = mid;
    else hi = mid;
  }
  const f = (t - time[lo]) / (time[hi] - time[lo] || 1);
  return intensity[lo] + f * (intensity[hi] - intensity[lo]);
}

function axisNames(i) {
  const n = i === 0 ? "" : String(i + 1);
  return { x: `x${n}`, y: `y${n}`, xa: `xaxis${n}`, ya: `yaxis${n}` };
}

function drawChromatogram() {
  const view = S.chrom;
  const row = selectedRow();
  if (!view || !row) return;
  const panels = view.panels;
  const n = panels.length;
  const gap = 0.07;
  const height = (1 - gap * (n - 1)) / n;
  const chosen = panels.find((p) => p.transition === row.transition) || panels[0];
  const centre = chosen.peak.rt_min ?? chosen.peak.expected_rt_min ?? (S.window.start + S.window.end) / 2;
  const width = Math.max(0.25, 2.5 * ((chosen.peak.end_min ?? S.window.end) - (chosen.peak.start_min ?? S.window.start)));
  const xRange = [Math.max(0, centre - width), centre + width];
  const traces = [];
  const shapes = [];
  const annotations = [];
  const layout = {
    margin: { l: 58, r: 10, t: 18, b: 30 },
    showlegend: false,
    hovermode: "closest",
    dragmode: "zoom",
    font: { size: 11, family: "system-ui, sans-serif" },
    plot_bgcolor: "#fff",
    paper_bgcolor: "#fff",
  };
  S.boundaryShapes = null;
  panels.forEach((p, i) => {
    const ax = axisNames(i);
    const top = 1 - i * (height + gap);
    const colour = ROLE_COLOUR[p.role] || "#333";
    layout[ax.xa] = {
      domain: [0, 1],
      anchor: ax.y,
      range: xRange,
      matches: i ? "x" : undefined,
      showticklabels: i === n - 1,
      title: i === n - 1 ? { text: "time (min)", standoff: 4 } : undefined,
      ticks: "outside",
      ticklen: 3,
      gridcolor: "#eef0f3",
      zeroline: false,
    };
    const inWindow = (t) => t >= xRange[0] && t <= xRange[1];
    const isChosen = p === chosen;
    const highest = (q) => q.time.reduce((m, t, k) => (inWindow(t) && q.intensity[k] > m ? q.intensity[k] : m), 0);
    const own = highest(p);
    // The faint neighbours count in the y-range, so that a peak next door is not cut at the top;
    // one far taller than this trace (a blank after the top calibrator, a low sample between
    // high ones) would flatten it, and is scaled down to this trace's apex instead, as said.
    const neighbours = (isChosen && $("show-neighbours").checked ? view.neighbours : []).map((nb) => {
      const top = highest(nb);
      const factor = own > 0 && top > NEIGHBOUR_SCALE_ABOVE * own ? own / top : 1;
      return { ...nb, factor, intensity: factor === 1 ? nb.intensity : nb.intensity.map((y) => y * factor) };
    });
    const yMax = Math.max(own, ...neighbours.map(highest), 0);
    const yTop = yMax > 0 ? yMax * 1.12 : 1;
    layout[ax.ya] = {
      domain: [top - height, top],
      anchor: ax.x,
      range: [0, yTop],
      exponentformat: "SI",
      ticks: "outside",
      ticklen: 3,
      gridcolor: "#eef0f3",
      zeroline: false,
      nticks: 4,
    };
    for (const nb of neighbours) {
      traces.push({
        x: nb.time, y: nb.intensity, xaxis: ax.x, yaxis: ax.y, type: "scatter", mode: "lines",
        line: { color: "#8c96a3", width: 1 }, opacity: 0.45, name: `#${nb.injection} ${nb.sample_id}`,
        hovertemplate: `#${nb.injection} ${esc(nb.sample_id)}${nb.factor === 1 ? "" : ` × ${fmtSig(nb.factor, 2)}`}<br>%{x:.3f} min, %{y:.4s}<extra></extra>`,
      });
    }
    const scaled = neighbours.filter((nb) => nb.factor !== 1);
    if (scaled.length) {
      annotations.push({
        text: `grey: ${scaled.map((nb) => `#${nb.injection} ${esc(nb.sample_id)} × ${fmtSig(nb.factor, 2)}`).join(", ")} (scaled to this trace's apex)`,
        xref: "paper", yref: "paper", x: 1, y: top, xanchor: "right", yanchor: "top", showarrow: false,
        font: { size: 10, color: "#667080" }, bgcolor: "rgba(255,255,255,0.8)",
      });
    }
    const pk = p.peak || {};
    if (pk.start_min != null && pk.end_min != null && p.time.length) {
      // the integrated area: the trace between the boundaries, closed along the baseline
      const xs = [pk.start_min];
      const ys = [interp(p.time, p.intensity, pk.start_min)];
      p.time.forEach((t, k) => {
        if (t > pk.start_min && t < pk.end_min) {
          xs.push(t);
          ys.push(p.intensity[k]);
        }
      });
      xs.push(pk.end_min, pk.end_min, pk.start_min);
      ys.push(interp(p.time, p.intensity, pk.end_min), pk.baseline_end ?? 0, pk.baseline_start ?? 0);
      traces.push({
        x: xs, y: ys, xaxis: ax.x, yaxis: ax.y, type: "scatter", mode: "none", fill: "toself",
        fillcolor: pk.manual ? "rgba(106,63,160,0.22)" : "rgba(31,95,168,0.18)", hoverinfo: "skip",
      });
    }
    traces.push({
      x: p.time, y: p.intensity, xaxis: ax.x, yaxis: ax.y, type: "scatter", mode: "lines",
      line: { color: colour, width: 1.4 }, name: p.transition,
      hovertemplate: `%{x:.3f} min<br>%{y:.4s}<extra>${esc(p.transition)}</extra>`,
    });
    if (pk.start_min != null && pk.end_min != null) {
      traces.push({
        x: [pk.start_min, pk.end_min], y: [pk.baseline_start ?? 0, pk.baseline_end ?? 0], xaxis: ax.x, yaxis: ax.y,
        type: "scatter", mode: "lines", line: { color: "#c0392b", width: 1.2 }, hoverinfo: "skip", name: "baseline",
      });
    }
    if (pk.rt_min != null && p.time.length) {
      traces.push({
        x: [pk.rt_min], y: [interp(p.time, p.intensity, pk.rt_min)], xaxis: ax.x, yaxis: ax.y, type: "scatter",
        mode: "markers", marker: { symbol: "triangle-down", size: 8, color: colour },
        hovertemplate: `apex %{x:.3f} min<extra></extra>`,
      });
    }
    const vline = (x, style, label) =>
      traces.push({
        x: [x, x], y: [0, yTop], xaxis: ax.x, yaxis: ax.y, type: "scatter", mode: "lines", line: style,
        hovertemplate: `${label} %{x:.3f} min<extra></extra>`,
      });
    if (pk.expected_rt_min != null) vline(pk.expected_rt_min, { color: "#555", width: 1, dash: "dot" }, "expected RT");
    if (pk.manual && pk.auto_start_min != null && pk.auto_end_min != null) {
      vline(pk.auto_start_min, { color: "rgba(31,95,168,0.35)", width: 1, dash: "dash" }, "automatic start");
      vline(pk.auto_end_min, { color: "rgba(31,95,168,0.35)", width: 1, dash: "dash" }, "automatic end");
    }
    if (isChosen && S.window) {
      // the boundaries a reviewer drags (the only shapes: config.edits.shapePosition moves them)
      S.boundaryShapes = { start: shapes.length, end: shapes.length + 1, yref: `${ax.y} domain`, xref: ax.x };
      for (const x of [S.window.start, S.window.end]) {
        shapes.push({
          type: "line", xref: ax.x, yref: `${ax.y} domain`, x0: x, x1: x, y0: 0, y1: 1,
          line: { color: BOUNDARY, width: 2 },
        });
      }
    }
    const stat = pk.status === "OK"
      ? `area ${fmtArea(pk.area)} · RT ${fmt(pk.rt_min)} · S/N ${fmtSn(pk.sn)}`
      : pk.status || "no data";
    const ratio = ionRatioText(view.ion_ratio, p, row);
    annotations.push({
      text: `<b>${esc(p.transition)}</b>  ${esc(stat)}${pk.manual ? "  <b>MANUAL</b>" : ""}${pk.manual && pk.auto_area != null ? ` (automatic ${fmtArea(pk.auto_area)})` : ""}${ratio}`,
      xref: "paper", yref: "paper", x: 0, y: top, xanchor: "left", yanchor: "bottom", showarrow: false,
      font: { size: 11, color: isChosen ? "#111" : "#555" },
    });
  });
  layout.shapes = shapes;
  layout.annotations = annotations;
  const config = {
    displaylogo: false,
    responsive: true,
    edits: { shapePosition: true },
    modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "toImage"],
  };
  const gd = $("chart");
  $("chart-title").textContent = `#${view.injection} ${view.sample_id} (${view.sample_type}) · ${row.transition}`;
  const first = !gd.classList.contains("js-plotly-plot");
  Plotly.react(gd, traces, layout, config);
  if (first) gd.on("plotly_relayout", onRelayout);
  syncInputs();
}

// The ion ratio in the heading of the qualifier it is measured with, and of the quantifier when
// it is flagged: the ratio, the calibrators' reference and the tolerance it was judged by.
function ionRatioText(ir, panel, row) {
  if (!ir) return "";
  const flagged = ir.flagged || (row && row.role === "quantifier" && row.flags.includes("ION_RATIO"));
  if (!(panel.transition === ir.qualifier || (panel.role === "quantifier" && flagged))) return "";
  if (ir.ratio == null) return "  · ion ratio: none (no qualifier or quantifier area)";
  const reference = ir.reference == null ? "no reference (no calibrator in the curve)" : `reference ${fmtSig(ir.reference, 3)}`;
  const tolerance = ir.tolerance_pct == null ? "" : ` ± ${fmtSig(ir.tolerance_pct, 3)} %`;
  const deviation = ir.deviation_pct == null ? "" : ` (${fmtDeviation(ir.deviation_pct)})`;
  const text = `ion ratio ${fmtSig(ir.ratio, 3)}${deviation} · ${reference}${tolerance}`;
  return flagged ? `  · <span style="color:#b3261e"><b>ION_RATIO</b> ${esc(text)}</span>` : `  · ${esc(text)}`;
}

function onRelayout(event) {
  if (S.relayoutGuard || !S.boundaryShapes || !S.window) return;
  const moved = {};
  for (const [key, value] of Object.entries(event)) {
    const m = /^shapes\[(\d+)\]\.(x0|x1)$/.exec(key);
    if (m) (moved[m[1]] = moved[m[1]] || []).push(Number(value));
  }
  if (!Object.keys(moved).length) return;
  const xAt = (index) => {
    const xs = moved[index];
    if (!xs) return null;
    return xs.reduce((a, b) => a + b, 0) / xs.length;
  };
  const start = xAt(S.boundaryShapes.start);
  const end = xAt(S.boundaryShapes.end);
  if (start != null) S.window.start = start;
  if (end != null) S.window.end = end;
  setWindow(Math.min(S.window.start, S.window.end), Math.max(S.window.start, S.window.end));
}

function setWindow(start, end) {
  S.window = { start: round4(start), end: round4(end), dirty: true };
  syncInputs();
  placeBoundaries();
  updateControls();
}

function round4(x) {
  return Math.round(x * 10000) / 10000;
}

function placeBoundaries() {
  const b = S.boundaryShapes;
  if (!b) return;
  const update = {};
  for (const [index, x] of [[b.start, S.window.start], [b.end, S.window.end]]) {
    Object.assign(update, { [`shapes[${index}].x0`]: x, [`shapes[${index}].x1`]: x, [`shapes[${index}].y0`]: 0, [`shapes[${index}].y1`]: 1 });
  }
  S.relayoutGuard = true;
  Promise.resolve(Plotly.relayout($("chart"), update)).finally(() => (S.relayoutGuard = false));
}

function syncInputs() {
  if (!S.window) return;
  S.inputsInvalid = false;
  for (const id of ["start", "end"]) $(id).classList.remove("invalid");
  $("start").value = S.window.start.toFixed(3);
  $("end").value = S.window.end.toFixed(3);
}

function onInputChange() {
  const start = parseFloat($("start").value);
  const end = parseFloat($("end").value);
  const valid = Number.isFinite(start) && Number.isFinite(end) && start >= 0 && start < end;
  // while the pair is wrong (e.g. the start typed past the old end) nothing can be applied
  S.inputsInvalid = !valid;
  for (const id of ["start", "end"]) $(id).classList.toggle("invalid", !valid);
  if (!valid) {
    showMessage("The start must be a number of minutes before the end: correct the boundaries to apply them.", "error");
    updateControls();
    return;
  }
  if (!$("message").hidden && $("message").className === "error" && $("message-text").textContent.startsWith("The start")) {
    $("message").hidden = true;
  }
  setWindow(start, end);
}

// ---------------------------------------------------------------------------------------------
// Corrections

function calibratorOf(row) {
  if (!row || row.sample_type !== "calibrator" || row.role !== "quantifier") return null;
  for (const cal of S.state.calibration) {
    if (cal.analyte !== row.analyte) continue;
    const c = cal.calibrators.find((x) => x.injection === row.injection);
    if (c) return c;
  }
  return null;
}

function updateControls() {
  const row = selectedRow();
  const has = Boolean(row) && !S.busy;
  const dirty = Boolean(S.window && S.window.dirty);
  $("controls").classList.toggle("dirty", dirty);
  const outside = windowOutside();
  $("window-note").textContent = outside;
  $("window-note").hidden = !outside;
  for (const id of ["start", "end"]) $(id).classList.toggle("outside", Boolean(outside));
  $("apply").disabled = !has || !S.window || S.inputsInvalid || Boolean(outside);
  $("reset-window").disabled = !has || !dirty;
  $("no-peak").disabled = !has || row.status === "NO_PEAK" && !row.manual;
  $("restore").disabled = !has || !row.manual;
  $("apply-all").disabled = !has || !S.window || S.inputsInvalid || Boolean(outside);
  const cal = calibratorOf(row);
  $("exclude").hidden = !cal || cal.excluded_by_analyst;
  $("include").hidden = !cal || !cal.excluded_by_analyst;
  $("exclude").title = cal && cal.excluded ? `Excluded by the curve fit (${cal.exclusion_reason}); exclude it by hand` : "Leave this calibrator out of the curve";
  $("exclude").disabled = $("include").disabled = !has;
  for (const id of ["undo", "redo", "report", "report2", "sign"]) if (S.busy) $(id).disabled = true;
  if (!S.busy && S.state) {
    $("undo").disabled = !S.state.undo;
    $("redo").disabled = !S.state.redo;
    $("report").disabled = $("report2").disabled = $("sign").disabled = false;
  }
}

// The time range of the selected row's trace, once its chromatogram is loaded (else null).
function traceRange() {
  const row = selectedRow();
  const view = S.chrom;
  if (!row || !view || view.injection !== row.injection || view.transition !== row.transition) return null;
  const panel = view.panels.find((p) => p.transition === row.transition);
  return panel && panel.time.length ? [panel.time[0], panel.time[panel.time.length - 1]] : null;
}

// A window reaching beyond the trace would be cut to it without a word: say so, and apply only
// a window inside it ("" when the window is inside, or there is no trace to compare with).
function windowOutside() {
  const range = traceRange();
  if (!range || !S.window) return "";
  const slack = 1e-4; // the boundaries are kept to 0.0001 min
  if (S.window.start >= range[0] - slack && S.window.end <= range[1] + slack) return "";
  const lo = (Math.ceil(range[0] * 1000) / 1000).toFixed(3);
  const hi = (Math.floor(range[1] * 1000) / 1000).toFixed(3);
  return `The chromatogram covers ${lo}–${hi} min: put both boundaries inside it to apply.`;
}

function correction(row, action, window) {
  const c = { file: row.file, target: action === "exclude" || action === "include" ? row.analyte : row.target, action };
  if (action === "integrate") Object.assign(c, { start_min: window.start, end_min: window.end });
  return c;
}

// Ask for the reason (pick list + free text) and the analyst; resolves to null when cancelled.
function askReason(summary, suggested = "") {
  const dialog = $("reason-dialog");
  $("reason-summary").textContent = summary;
  $("reason-error").textContent = "";
  $("reason-text").value = "";
  $("reason-analyst").value = analystName();
  const pick = $("reason-pick");
  if (pick.options.length !== S.state.reasons.length + 1) {
    pick.length = 1;
    for (const r of S.state.reasons) pick.add(new Option(r, r));
  }
  pick.value = S.state.reasons.includes(suggested) ? suggested : "";
  return new Promise((resolve) => {
    const done = (value) => {
      $("reason-form").onsubmit = null;
      $("reason-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    $("reason-form").onsubmit = (event) => {
      event.preventDefault();
      const reason = [pick.value, $("reason-text").value.trim()].filter(Boolean).join(": ");
      const analyst = $("reason-analyst").value.trim();
      if (!reason) return void ($("reason-error").textContent = "Every change needs a reason: pick one or type it.");
      if (!analyst) return void ($("reason-error").textContent = "Give your name: the trail records who made the change.");
      rememberAnalyst(analyst);
      done({ reason, analyst });
    };
    $("reason-cancel").onclick = () => done(null);
    dialog.onclose = () => done(null);
    dialog.showModal();
    (pick.value ? $("reason-text") : pick).focus();
  });
}

async function post(path, body, describe) {
  S.busy = true;
  const wasDirty = Boolean(S.window && S.window.dirty);
  if (S.window) S.window.dirty = false; // the change redraws the peak as it then is
  updateControls();
  const t0 = performance.now();
  try {
    const state = await api(path, body);
    const t1 = performance.now();
    setState(state);
    const t2 = performance.now();
    const timing = { path, server_ms: t1 - t0, render_ms: t2 - t1, total_ms: t2 - t0, server_timing: S.lastServerTiming };
    S.timings.push(timing);
    S.timingOfChart = { timing, t0 };
    // painted: the frame after the new grid was drawn
    requestAnimationFrame(() => setTimeout(() => (timing.painted_ms = performance.now() - t0), 0));
    if (describe) showMessage(describe(state), "info");
    return state;
  } catch (err) {
    if (path === "/api/change") {
      // the review put overrides.csv and the results back: say so, and keep the boundaries typed
      if (S.window) S.window.dirty = wasDirty;
      const problems = (err.problems || []).filter((p) => p !== err.message);
      showMessage(`Not applied, nothing was changed: ${err.message || err}`, "error", problems);
    } else {
      showError(err);
    }
    return null;
  } finally {
    S.busy = false;
    updateControls();
  }
}

async function change(corrections, summary, suggested, integrated) {
  const answer = await askReason(summary, suggested);
  if (!answer) return null;
  const describe = (st) => `Applied: ${summary}${integrated ? `; ${integrated(st)}` : ""}`;
  return post("/api/change", { corrections, reason: answer.reason, analyst: answer.analyst }, describe);
}

// What was integrated in the end: the boundaries snap to the trace's data points.
function integratedText(state, row) {
  const now = state.rows.find((r) => r.id === row.id);
  if (!now) return "";
  const where = `#${now.injection}`;
  if (now.status !== "OK" || now.start_min == null || now.end_min == null) return `${where} is now ${now.status}`;
  return `integrated ${now.start_min.toFixed(4)}–${now.end_min.toFixed(4)} min in ${where} (boundaries on the nearest data points)`;
}

function whereOf(row) {
  return `${row.transition} of #${row.injection} ${row.sample_id}`;
}

async function applyWindow() {
  const row = selectedRow();
  if (!row || !S.window) return;
  if (!(S.window.start < S.window.end)) return showMessage("The start must be before the end.", "error");
  if (windowOutside()) return showMessage(windowOutside(), "error");
  const w = { ...S.window };
  await change(
    [correction(row, "integrate", w)],
    `Integrate ${whereOf(row)} between ${w.start.toFixed(3)} and ${w.end.toFixed(3)} min`,
    "",
    (st) => integratedText(st, row)
  );
}

async function applyWindowToMany() {
  const row = selectedRow();
  if (!row || !S.window) return;
  const w = { ...S.window };
  const scope = $("apply-scope").value;
  const pool = scope === "filtered" ? S.filtered : S.state.rows;
  const rows = pool.filter((r) => r.transition === row.transition);
  if (!rows.length) return showMessage("No rows of this transition to apply the window to.", "error");
  if (windowOutside()) return showMessage(windowOutside(), "error");
  const what = scope === "filtered" ? `${rows.length} filtered injections` : `all ${rows.length} injections`;
  await change(
    rows.map((r) => correction(r, "integrate", w)),
    `Integrate ${row.transition} between ${w.start.toFixed(3)} and ${w.end.toFixed(3)} min in ${what}`,
    "Same window for all injections (SOP)",
    (st) => integratedText(st, row)
  );
}

async function simple(action) {
  const row = selectedRow();
  if (!row) return;
  const text = {
    no_peak: `Set ${whereOf(row)} to no peak`,
    restore: `Restore the automatic integration of ${whereOf(row)}`,
    exclude: `Exclude calibrator #${row.injection} ${row.sample_id} from the ${row.analyte} curve`,
    include: `Include calibrator #${row.injection} ${row.sample_id} in the ${row.analyte} curve again`,
  }[action];
  const suggested = { no_peak: "No peak present", exclude: "Calibrator excluded: assignable cause" }[action] || "";
  await change([correction(row, action)], text, suggested);
}

function requireAnalyst() {
  const name = analystName();
  if (!name) {
    showMessage("Type your name in the Analyst field first: the trail records who undid or redid a change.", "error");
    $("analyst").focus();
  }
  return name;
}

async function undo() {
  const analyst = requireAnalyst();
  if (analyst) await post("/api/undo", { analyst }, (st) => `Undone. ${st.redo ? `Redo: ${st.redo}` : ""}`);
}

async function redo() {
  const analyst = requireAnalyst();
  if (analyst) await post("/api/redo", { analyst }, () => "Redone.");
}

async function writeReport() {
  await post("/api/report", { analyst: analystName() }, (st) => `Report written: ${st.folder}/results/report.html`);
}

// ---------------------------------------------------------------------------------------------
// Tabs: curve, QCs, verdicts, reanalysis, sign-off

function renderTabs() {
  renderCurve();
  renderQcs();
  renderVerdicts();
  renderReanalysis();
  renderSignoff();
}

function showTab(name) {
  S.tab = name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".tab-panel")) p.hidden = p.id !== `tab-${name}`;
  if (name === "curve") renderCurve();
}

function curveKeyOf(cal) {
  return `${cal.analyte}|${cal.calibrator_set}`;
}

function renderCurve() {
  const cals = S.state.calibration;
  if (!cals.length) {
    $("curve-choices").innerHTML = '<span class="muted">No calibration curve in this run: there are no calibrators to fit (a method without calibrator sets measures peaks only: areas, retention times and flags).</span>';
    $("curve-params").textContent = "";
    return;
  }
  const row = selectedRow();
  if (!S.curveKey || !cals.some((c) => curveKeyOf(c) === S.curveKey)) {
    const own = row && cals.find((c) => c.analyte === row.analyte);
    S.curveKey = curveKeyOf(own || cals[0]);
  }
  $("curve-choices").innerHTML = cals
    .map((c) => {
      const key = curveKeyOf(c);
      const v = S.state.verdicts.find((x) => x.analyte === c.analyte && x.calibrator_set === c.calibrator_set);
      const ok = v ? v.accepted : c.accepted;
      return `<button type="button" data-key="${esc(key)}" class="${key === S.curveKey ? "active" : ""}">${esc(c.analyte)} · ${esc(c.calibrator_set)} <span class="${ok ? "ok" : "bad"}">${ok ? "✓" : "✗"}</span></button>`;
    })
    .join("");
  const cal = cals.find((c) => curveKeyOf(c) === S.curveKey);
  const params = [
    `${cal.model}, ${cal.weighting}`,
    cal.slope != null ? `slope ${fmtSig(cal.slope)}` : "",
    cal.intercept != null ? `intercept ${fmtSig(cal.intercept)}` : "",
    cal.quadratic ? `quadratic ${fmtSig(cal.quadratic)}` : "",
    cal.r_squared != null ? `r² ${Number(cal.r_squared).toFixed(4)}` : "",
    `${cal.n_used} of ${cal.n_calibrators} calibrators`,
    cal.lloq != null ? `range ${fmtSig(cal.lloq)}–${fmtSig(cal.uloq)} ${S.state.units}` : "",
    cal.problem ? `problem: ${cal.problem}` : "",
  ].filter(Boolean);
  $("curve-params").textContent = params.join(" · ");
  drawCurve(cal);
  const rows = cal.calibrators.map((c) => {
    const dev = c.accuracy_pct == null ? null : c.accuracy_pct - 100;
    const limit = c.nominal === cal.lloq ? 20 : 15;
    const bad = dev != null && Math.abs(dev) > limit;
    return `<tr class="${bad && !c.excluded ? "fail" : ""}"><td class="num">${c.injection}</td><td>${esc(c.sample_id)}</td>` +
      `<td class="num">${fmtSig(c.nominal)}</td><td class="num">${fmtSig(c.area_ratio)}</td><td class="num">${fmtSig(c.found)}</td>` +
      `<td class="num">${dev == null ? "" : fmtDeviation(dev)}</td>` +
      `<td>${c.excluded ? `<span class="badge f-EXCLUDED" title="${esc(c.exclusion_reason || "excluded")}">${c.excluded_by_analyst ? "EXCLUDED by analyst" : "EXCLUDED by the fit"}</span>` : ""}</td>` +
      `<td><button type="button" data-cal="${c.injection}" data-action="${c.excluded_by_analyst ? "include" : "exclude"}">${c.excluded_by_analyst ? "Include" : "Exclude"}</button></td></tr>`;
  });
  $("cal-table").innerHTML =
    `<thead><tr><th class="num">Inj</th><th>Calibrator</th><th class="num">Nominal</th><th class="num">Area ratio</th><th class="num">Found</th><th class="num">Deviation</th><th></th><th></th></tr></thead><tbody>${rows.join("")}</tbody>`;
}

function drawCurve(cal) {
  const gd = $("curve-plot");
  if (S.tab !== "curve" || gd.offsetParent === null) return; // drawn when shown
  const log = $("curve-log").checked;
  const used = cal.calibrators.filter((c) => !c.excluded);
  const out = cal.calibrators.filter((c) => c.excluded);
  const point = (cs, open) => ({
    x: cs.map((c) => c.nominal), y: cs.map((c) => c.area_ratio), type: "scatter", mode: "markers",
    marker: { size: 8, color: "#1f5fa8", symbol: open ? "circle-open" : "circle", line: { width: 1.5, color: "#1f5fa8" } },
    customdata: cs.map((c) => c.injection), name: open ? "excluded" : "calibrators",
    text: cs.map((c) => `#${c.injection} ${c.sample_id}${open ? " (excluded)" : ""}`),
    hovertemplate: "%{text}<br>nominal %{x}<br>area ratio %{y:.4g}<extra></extra>",
  });
  const resid = (cs, open) => ({
    x: cs.map((c) => c.nominal), y: cs.map((c) => (c.accuracy_pct == null ? null : c.accuracy_pct - 100)),
    xaxis: "x2", yaxis: "y2", type: "scatter", mode: "markers", customdata: cs.map((c) => c.injection),
    marker: { size: 7, color: "#1f5fa8", symbol: open ? "circle-open" : "circle", line: { width: 1.5, color: "#1f5fa8" } },
    text: cs.map((c) => `#${c.injection} ${c.sample_id}`), hovertemplate: "%{text}<br>%{y:+.1f} %<extra></extra>",
  });
  const all = cal.calibrators.filter((c) => c.nominal != null);
  const limits = {
    x: [...all.map((c) => c.nominal), ...all.map((c) => c.nominal)],
    y: [...all.map((c) => (c.nominal === cal.lloq ? 20 : 15)), ...all.map((c) => (c.nominal === cal.lloq ? -20 : -15))],
    xaxis: "x2", yaxis: "y2", type: "scatter", mode: "markers", hoverinfo: "skip",
    marker: { symbol: "line-ew-open", size: 12, color: "#c0392b", line: { width: 1.5 } },
  };
  // log axes labelled at the decades only (plotly's default "2, 5" between them read as 2, 10, 5, 2, 1)
  const decades = log ? { dtick: 1, exponentformat: "none", minor: { dtick: "D1", showgrid: true, gridcolor: "#f6f7f9" } } : {};
  const traces = [
    { x: cal.curve.x, y: cal.curve.y, type: "scatter", mode: "lines", line: { color: "#333", width: 1.2 }, name: "fit", hoverinfo: "skip" },
    point(used, false), point(out, true), resid(used, false), resid(out, true), limits,
  ];
  const layout = {
    margin: { l: 60, r: 10, t: 10, b: 36 },
    showlegend: false,
    font: { size: 11, family: "system-ui, sans-serif" },
    xaxis: { type: log ? "log" : "linear", anchor: "y", domain: [0, 1], showticklabels: false, gridcolor: "#eef0f3", zeroline: false, ...decades },
    yaxis: { type: log ? "log" : "linear", domain: [0.36, 1], title: { text: "area ratio" }, gridcolor: "#eef0f3", zeroline: false, exponentformat: "SI", ...decades },
    xaxis2: { type: log ? "log" : "linear", anchor: "y2", matches: "x", title: { text: `nominal (${S.state.units})`, standoff: 4 }, gridcolor: "#eef0f3", ...decades },
    yaxis2: { domain: [0, 0.3], title: { text: "deviation %" }, zeroline: true, zerolinecolor: "#999", gridcolor: "#eef0f3", range: [-40, 40] },
    shapes: [{ type: "rect", xref: "x2 domain", yref: "y2", x0: 0, x1: 1, y0: -15, y1: 15, fillcolor: "rgba(28,122,59,0.08)", line: { width: 0 }, layer: "below" }],
  };
  const devs = all.map((c) => Math.abs((c.accuracy_pct ?? 100) - 100));
  const worst = Math.max(25, ...devs);
  layout.yaxis2.range = [-worst * 1.15, worst * 1.15];
  const first = !gd.classList.contains("js-plotly-plot");
  Plotly.react(gd, traces, layout, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
  if (first) {
    gd.on("plotly_click", (event) => {
      const injection = event.points && event.points[0] && event.points[0].customdata;
      if (injection == null) return;
      const c = S.state.calibration.find((x) => curveKeyOf(x) === S.curveKey);
      const target = S.state.rows.find((r) => r.injection === injection && r.role === "quantifier" && r.analyte === c.analyte);
      if (target) selectVisible(target.id);
    });
  }
}

function selectVisible(id) {
  if (!S.filtered.some((r) => r.id === id)) {
    for (const f of ["f-flag", "f-type", "f-analyte", "f-role"]) $(f).value = "";
    $("f-flagged").checked = false;
    renderGrid();
  }
  select(id);
}

function table(el, head, rows) {
  el.innerHTML = `<thead><tr>${head.map((h) => `<th class="${h.startsWith("#") ? "num" : ""}">${esc(h.replace(/^#/, ""))}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody>`;
}

function renderQcs() {
  const qcs = S.state.qcs;
  const groups = new Map();
  for (const q of qcs) {
    const g = groups.get(q.analyte) || { n: 0, pass: 0 };
    g.n += 1;
    g.pass += q.qc_passed ? 1 : 0;
    groups.set(q.analyte, g);
  }
  $("qc-summary").innerHTML = [...groups]
    .map(([a, g]) => `<span class="chip neutral">${esc(a)}: ${g.pass} of ${g.n} QCs within limits</span>`)
    .join(" ") || '<span class="muted">No QC results in this run (no QC samples, or no calibration curve to measure them by).</span>';
  table(
    $("qc-table"),
    ["#Inj", "QC", "Analyte", "Set", "Level", "#Nominal", "#Found", "#Accuracy", "Result", "Flags"],
    qcs.map(
      (q) =>
        `<tr class="${q.qc_passed ? "" : "fail"} goto" data-inj="${q.injection}" data-analyte="${esc(q.analyte)}"><td class="num">${q.injection}</td><td>${esc(q.sample_id)}</td><td>${esc(q.analyte)}</td>` +
        `<td>${esc(q.calibrator_set)}</td><td>${esc(q.level)}</td><td class="num">${fmtSig(q.nominal)}</td><td class="num">${fmtSig(q.found)}</td>` +
        `<td class="num">${fmtPct(q.accuracy_pct)}</td><td class="${q.qc_passed ? "pass" : "failtext"}">${q.qc_passed ? "pass" : "FAIL"}</td>` +
        `<td>${badges(String(q.flags || "").split(";").filter(Boolean))}</td></tr>`
    )
  );
}

function renderVerdicts() {
  if (!S.state.verdicts.length) {
    $("verdict-table").innerHTML =
      '<tbody><tr><td class="muted">No verdicts: ICH M10 acceptance is judged on a calibration curve, and this run has none.</td></tr></tbody>';
    return;
  }
  table(
    $("verdict-table"),
    ["Analyte", "Set", "Verdict", "Rules not met"],
    S.state.verdicts.map(
      (v) =>
        `<tr class="${v.accepted ? "" : "fail"}"><td>${esc(v.analyte)}</td><td>${esc(v.calibrator_set)}</td>` +
        `<td class="${v.accepted ? "pass" : "failtext"}">${v.accepted ? "accepted" : "REJECTED"}</td><td class="wrap">` +
        (v.failing.length
          ? `<ul class="rules">${v.failing
              .map((r) => `<li><span class="${r.critical ? "failtext" : "warntext"}">${r.critical ? "rejects" : "warning"}</span> <b>${esc(r.id)}</b> ${esc(r.rule)} <span class="muted">(${esc(r.section)}; measured ${esc(r.measured)}, limit ${esc(r.limit)})</span></li>`)
              .join("")}</ul>`
          : v.reasons.map(esc).join("; ") || '<span class="muted">none</span>') +
        "</td></tr>"
    )
  );
}

function renderReanalysis() {
  const rows = S.state.reanalysis;
  if (!rows.length) {
    $("reanalysis-table").innerHTML = '<tbody><tr><td class="muted">No sample needs reanalysis.</td></tr></tbody>';
    return;
  }
  const cols = ["injection", "sample_id", "analyte", "reason", "action", "detail", "suggested_dilution_factor"].filter((c) => c in rows[0]);
  table(
    $("reanalysis-table"),
    cols.map((c) => (c === "injection" || c === "suggested_dilution_factor" ? `#${c.replace(/_/g, " ")}` : c.replace(/_/g, " "))),
    rows.map((r) => `<tr class="goto" data-inj="${r.injection}" data-analyte="${esc(r.analyte)}">${cols.map((c) => `<td class="${typeof r[c] === "number" ? "num" : ""}">${esc(r[c])}</td>`).join("")}</tr>`)
  );
}

function renderSignoff() {
  const st = S.state;
  const banner = $("trail-banner");
  banner.hidden = st.trail_intact;
  banner.textContent = st.trail_intact ? "" : `The audit trail is not intact: ${st.trail_problems.join("; ")}`;
  table(
    $("signature-table"),
    ["Name", "Meaning", "Signed (UTC)", "Results hash", "Covers"],
    st.signatures.length
      ? st.signatures.map(
          (s) =>
            `<tr class="${s.current ? "" : "fail"}"><td>${esc(s.name)}</td><td>${esc(s.meaning)}</td><td>${esc(s.at)}</td>` +
            `<td class="mono" title="${esc(s.results_sha256)}">${shortHash(s.results_sha256)}</td>` +
            `<td class="${s.current ? "covers" : "stale"}">${s.current ? "covers current results" : "no longer covers the current results"}</td></tr>`
        )
      : ['<tr><td colspan="5" class="muted">Not signed yet.</td></tr>']
  );
  const entries = [...st.trail].reverse();
  $("trail-note").textContent = `${st.trail.length} entries, newest first${st.trail_intact ? ", chain intact" : ""}`;
  table(
    $("trail-table"),
    ["#No", "Time (UTC)", "Event", "By", "Summary", "Results hash"],
    entries.map(
      (e) =>
        `<tr><td class="num">${e.number}</td><td>${esc(e.at)}</td><td>${esc(e.event)}</td><td>${esc(e.by)}</td>` +
        `<td class="wrap">${esc(e.summary)}</td><td class="mono" title="${esc(e.results_sha256)}">${shortHash(e.results_sha256)}</td></tr>`
    )
  );
}

// ---------------------------------------------------------------------------------------------
// Signing

function openSignDialog() {
  const st = S.state;
  const dialog = $("sign-dialog");
  const meaning = $("sign-meaning");
  if (!meaning.options.length) for (const m of st.meanings) meaning.add(new Option(m.meaning, m.meaning));
  const reviewed = st.signatures.some((s) => s.current && s.meaning === "reviewed");
  meaning.value = reviewed && st.meanings.some((m) => m.meaning === "approved") ? "approved" : st.meanings[0].meaning;
  $("sign-name").value = analystName();
  $("sign-hash").textContent = st.results_sha256;
  $("sign-confirm").checked = false;
  $("sign-error").textContent = "";
  showStatement();
  dialog.showModal();
  $("sign-name").focus();
}

function showStatement() {
  const m = S.state.meanings.find((x) => x.meaning === $("sign-meaning").value);
  $("sign-statement").textContent = m ? m.statement : "";
  $("sign-ok").disabled = !($("sign-confirm").checked && $("sign-name").value.trim());
}

async function submitSignature(event) {
  event.preventDefault();
  const name = $("sign-name").value.trim();
  const meaning = $("sign-meaning").value;
  if (!name || !$("sign-confirm").checked) return;
  S.busy = true;
  try {
    const state = await api("/api/sign", { name, meaning });
    $("sign-dialog").close();
    setState(state);
    showMessage(`Signed "${meaning}" by ${name}.`, "info");
  } catch (err) {
    $("sign-error").textContent = [err.message, ...(err.problems || []).filter((p) => p !== err.message)].join(" ");
    showError(err);
  } finally {
    S.busy = false;
    updateControls();
  }
}

// ---------------------------------------------------------------------------------------------
// Other tabs' changes: poll the version

async function poll() {
  if (S.busy || !S.state || document.querySelector("dialog[open]")) return;
  try {
    const { version } = await api("/api/version");
    if (version !== S.state.version && !S.busy) {
      // an error on screen (e.g. "make the change again") must stay until it is read or dismissed
      const errorShown = !$("message").hidden && $("message").className === "error";
      await reloadState();
      if (!errorShown) showMessage("Updated with a change made elsewhere (another tab or window).", "info");
    }
  } catch (err) {
    showError(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

function onKey(event) {
  if (document.querySelector("dialog[open]")) return;
  const tag = event.target.tagName;
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
  if (event.ctrlKey || event.metaKey || event.altKey) {
    const key = event.key.toLowerCase();
    if (!(event.ctrlKey || event.metaKey) || event.altKey) return;
    if (key === "z" && !event.shiftKey) {
      event.preventDefault();
      undo();
    } else if ((key === "z" && event.shiftKey) || (key === "y" && !event.shiftKey)) {
      event.preventDefault();
      redo();
    }
    return;
  }
  if (event.key === "ArrowDown" || event.key === "j") {
    event.preventDefault();
    moveSelection(1);
  } else if (event.key === "ArrowUp" || event.key === "k") {
    event.preventDefault();
    moveSelection(-1);
  } else if (event.key === "Enter" && event.target !== $("chart") && tag !== "BUTTON") {
    event.preventDefault();
    $("chart").focus();
  } else if (event.key === "Escape" && event.target === $("chart")) {
    $("grid-scroll").focus();
  }
}

function wire() {
  const stored = (() => {
    try {
      return localStorage.getItem(ANALYST_KEY) || "";
    } catch (err) {
      return "";
    }
  })();
  $("analyst").value = stored;
  $("analyst").addEventListener("change", () => rememberAnalyst(analystName()));
  $("grid-scroll").addEventListener("scroll", () => {
    if (!S.sliceQueued) {
      S.sliceQueued = true;
      requestAnimationFrame(() => {
        S.sliceQueued = false;
        if (S.state) renderSlice(false);
      });
    }
  });
  $("grid-body").addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-id]");
    if (tr) select(tr.dataset.id);
  });
  document.addEventListener("keydown", onKey);
  $("start").addEventListener("change", onInputChange);
  $("end").addEventListener("change", onInputChange);
  $("apply").addEventListener("click", applyWindow);
  $("reset-window").addEventListener("click", () => {
    const panel = S.chrom && S.chrom.panels.find((p) => p.transition === selectedRow().transition);
    S.window = defaultWindow((panel && panel.peak) || {});
    syncInputs();
    placeBoundaries();
    updateControls();
  });
  $("no-peak").addEventListener("click", () => simple("no_peak"));
  $("restore").addEventListener("click", () => simple("restore"));
  $("exclude").addEventListener("click", () => simple("exclude"));
  $("include").addEventListener("click", () => simple("include"));
  $("apply-all").addEventListener("click", applyWindowToMany);
  $("show-neighbours").addEventListener("change", drawChromatogram);
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("report").addEventListener("click", writeReport);
  $("report2").addEventListener("click", writeReport);
  $("sign").addEventListener("click", openSignDialog);
  $("sign-form").addEventListener("submit", submitSignature);
  $("sign-cancel").addEventListener("click", () => $("sign-dialog").close());
  for (const id of ["sign-meaning", "sign-confirm", "sign-name"]) $(id).addEventListener("input", showStatement);
  $("sign-meaning").addEventListener("change", showStatement);
  $("message-close").addEventListener("click", () => ($("message").hidden = true));
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("curve-log").addEventListener("change", renderCurve);
  $("curve-choices").addEventListener("click", (event) => {
    const b = event.target.closest("button[data-key]");
    if (b) {
      S.curveKey = b.dataset.key;
      renderCurve();
    }
  });
  for (const id of ["qc-table", "reanalysis-table"]) {
    // a QC or a sample to reanalyse: its quantifier in the grid and the chart
    $(id).addEventListener("click", (event) => {
      const tr = event.target.closest("tr[data-inj]");
      if (!tr) return;
      const row = S.state.rows.find(
        (r) => r.injection === Number(tr.dataset.inj) && r.role === "quantifier" && r.analyte === tr.dataset.analyte
      );
      if (row) selectVisible(row.id);
    });
  }
  $("cal-table").addEventListener("click", (event) => {
    const b = event.target.closest("button[data-cal]");
    if (!b) return;
    const c = S.state.calibration.find((x) => curveKeyOf(x) === S.curveKey);
    const row = S.state.rows.find((r) => r.injection === Number(b.dataset.cal) && r.role === "quantifier" && r.analyte === c.analyte);
    if (row) {
      selectVisible(row.id);
      simple(b.dataset.action);
    }
  });
}

async function start() {
  wire();
  try {
    await reloadState();
  } catch (err) {
    showError(err);
    return;
  }
  setInterval(poll, POLL_MS);
}

start();
