// gapinit dashboard: plain JS + plotly.js, no build step. Every page polls its sweep's /version
// endpoint and re-fetches its data only when the version changed (see app.py for the endpoints).
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const POLL_MS = 1500;
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22"];
window.__dash = { errors: [], refreshes: 0, version: null };
window.addEventListener("error", (e) => window.__dash.errors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.__dash.errors.push(String(e.reason)));

async function api(path) {
  const headers = TOKEN ? { Authorization: "Bearer " + TOKEN } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toPrecision(digits);
  }
  return String(v);
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function rgba(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

function keepToken() {
  if (!TOKEN) return;
  for (const a of document.querySelectorAll("a[data-keep-token]")) {
    const u = new URL(a.href, location.href);
    u.searchParams.set("token", TOKEN);
    a.href = u.pathname + u.search + u.hash;
  }
}

// ------------------------------------------------------------------------------------ live polling
function live(versionPath, refresh) {
  const badge = document.getElementById("live");
  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      const { version } = await api(versionPath);
      if (version !== window.__dash.version) {
        badge.classList.add("flash");
        await refresh();
        window.__dash.version = version;
        window.__dash.refreshes += 1;
        document.body.dataset.version = version;
      }
      badge.className = "live ok";
      badge.textContent = "live · checked " + new Date().toLocaleTimeString();
    } catch (err) {
      badge.className = "live err";
      badge.textContent = "not reachable: " + err.message;
    } finally {
      busy = false;
    }
  }
  tick();
  setInterval(tick, POLL_MS);
}

// --------------------------------------------------------------------------------------- tables
function sortableTable(table, columns, rows, state, rowClass) {
  const thead = table.tHead, tbody = table.tBodies[0];
  thead.replaceChildren(el("tr", {}, ...columns.map((c, i) => {
    const th = el("th", { text: c.label, title: c.title || "" });
    if (state.col === i) th.className = state.dir > 0 ? "asc" : "desc";
    th.onclick = () => { state.dir = state.col === i ? -state.dir : 1; state.col = i; sortableTable(table, columns, rows, state, rowClass); };
    return th;
  })));
  let shown = rows;
  if (state.col !== null && state.col !== undefined) {
    const c = columns[state.col];
    shown = [...rows].sort((a, b) => {
      const x = c.value(a), y = c.value(b);
      if (x === y) return 0;
      if (x === null || x === undefined || x === "") return 1;
      if (y === null || y === undefined || y === "") return -1;
      return (x < y ? -1 : 1) * state.dir;
    });
  }
  tbody.replaceChildren(...shown.map((r) => {
    const tr = el("tr", { class: rowClass ? rowClass(r) : "" });
    for (const c of columns) {
      const v = c.value(r);
      const td = el("td", { class: c.cls || (typeof v === "number" ? "num" : "") });
      const shownValue = c.render ? c.render(r) : fmt(v);
      if (shownValue instanceof Node) td.append(shownValue); else td.textContent = shownValue;
      tr.append(td);
    }
    return tr;
  }));
}

// --------------------------------------------------------------------------------------- curves
const colorOf = {};
function groupColor(group) {
  if (!(group in colorOf)) colorOf[group] = PALETTE[Object.keys(colorOf).length % PALETTE.length];
  return colorOf[group];
}

function curveTraces(data, withSeeds) {
  const traces = [];
  for (const g of data.groups) {
    const c = groupColor(g.group);
    const ok = g.epoch.map((_, i) => g.ci95_low[i] !== null && g.ci95_high[i] !== null);
    const xs = g.epoch.filter((_, i) => ok[i]);
    const lo = g.ci95_low.filter((_, i) => ok[i]), hi = g.ci95_high.filter((_, i) => ok[i]);
    traces.push({
      x: [...xs, ...[...xs].reverse()], y: [...hi, ...[...lo].reverse()], fill: "toself", type: "scatter",
      mode: "lines", line: { width: 0 }, fillcolor: rgba(c, 0.18), hoverinfo: "skip", showlegend: false,
      legendgroup: g.group, name: g.group + " 95% CI", meta: { kind: "band", group: g.group },
    });
    if (withSeeds && g.seeds) {
      for (const s of g.seeds) {
        traces.push({
          x: s.epoch, y: s.value, type: "scatter", mode: "lines", line: { color: rgba(c, 0.35), width: 1 },
          legendgroup: g.group, showlegend: false, name: `${g.group} seed ${s.seed}`,
          hovertemplate: `seed ${s.seed}<br>epoch %{x}: %{y:.4g}<extra>${g.group}</extra>`,
          meta: { kind: "seed", group: g.group, trial_id: s.trial_id },
        });
      }
    }
    traces.push({
      x: g.epoch, y: g.mean, type: "scatter", mode: "lines+markers", line: { color: c, width: 2.5 },
      marker: { size: 7, symbol: g.n.map((n) => (n < g.n_trials ? "circle-open" : "circle")) },
      legendgroup: g.group, name: `${g.group} (${g.n_trials} seeds)`,
      customdata: g.epoch.map((_, i) => [g.n[i], g.ci95_low[i], g.ci95_high[i]]),
      hovertemplate: "epoch %{x}: mean %{y:.4g}<br>95% CI %{customdata[1]:.4g} .. %{customdata[2]:.4g}, n=%{customdata[0]}<extra>%{fullData.name}</extra>",
      meta: { kind: "mean", group: g.group },
    });
  }
  return traces;
}

function plotCurves(div, data, withSeeds, ytitle, rungs) {
  const layout = {
    margin: { l: 60, r: 16, t: 10, b: 56 }, xaxis: { title: { text: "epoch" }, zeroline: false },
    yaxis: { title: { text: ytitle || data.metric }, zeroline: false }, legend: { orientation: "h", y: -0.25 },
    hovermode: "closest", paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  };
  if (!data.groups.length) {
    layout.annotations = [{ text: "no reports yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }];
  }
  const traces = curveTraces(data, withSeeds);
  if (rungs && rungs.available) {
    const fate = {};
    for (const g of rungs.groups) if (g.state === "stopped") fate[g.group] = `stopped at ${rungs.time_attr} ${fmt(g.stopped_at)}`;
    for (const t of traces) if (t.meta.kind === "mean" && fate[t.meta.group]) t.name += ` · ${fate[t.meta.group]}`;
    layout.shapes = rungs.rungs.map((r) => ({ type: "line", xref: "x", yref: "paper", x0: r.milestone, x1: r.milestone,
      y0: 0, y1: 1, line: { color: "#8a939e", width: 1, dash: "dot" } }));
    layout.annotations = rungs.rungs.map((r) => ({ x: r.milestone, y: 0.01, xref: "x", yref: "paper", yanchor: "bottom", xanchor: "right",
      showarrow: false, font: { size: 11, color: "#66707c" },
      text: `rung ${r.rung}` + (data.metric === rungs.metric && r.cutoff !== null ? ` · cutoff ${fmt(r.cutoff)}` : "") }));
  }
  div.dataset.groups = String(data.groups.length);
  return Plotly.react(div, traces, layout, { displaylogo: false, responsive: true });
}

// ------------------------------------------------------------------------------------ sweep page
async function sweepPage() {
  const name = document.body.dataset.sweep;
  const base = `/api/sweeps/${encodeURIComponent(name)}`;
  const metricSel = document.getElementById("metric");
  const seedsBox = document.getElementById("show-seeds");
  const filter = document.getElementById("filter"), statusSel = document.getElementById("status-filter");
  const trialSort = { col: null, dir: 1 };
  let trialData = null, metricChosen = null, lastRungs = null;

  function drawTrials() {
    if (!trialData) return;
    const q = filter.value.trim().toLowerCase(), st = statusSel.value;
    const rows = trialData.trials.filter((r) => (!st || r.status === st) &&
      (!q || JSON.stringify(r).toLowerCase().includes(q)));
    const cols = [
      { label: "trial", value: (r) => r.trial_id },
      { label: "status", value: (r) => r.status, render: (r) => el("span", { class: "status " + r.status, text: r.status }) },
      { label: "group", value: (r) => r.group },
      { label: "seed", value: (r) => r.seed },
      { label: "epoch", value: (r) => r.last_epoch, title: "epoch of the last report" },
      { label: "reports", value: (r) => r.n_reports },
      { label: "rung", value: (r) => r.rung_reached, title: "rung reached (seed-group ASHA / ASHA)" },
      { label: "stop reason", value: (r) => r.stop_reason },
      ...trialData.metrics.map((m) => ({ label: m, value: (r) => r.metrics[m], title: "at the last report" })),
      { label: "error", value: (r) => r.error, cls: "err" },
      { label: "checkpoint", value: (r) => r.checkpoint, cls: "path", render: (r) => r.checkpoint ?
        el("span", { title: r.checkpoint, text: "…/" + r.checkpoint.split("/").slice(-2).join("/") }) : "" },
    ];
    sortableTable(document.getElementById("trials"), cols, rows, trialSort, (r) => r.status || "");
    document.getElementById("trial-count").textContent = `${rows.length} of ${trialData.trials.length} trials`;
  }
  filter.oninput = drawTrials;
  statusSel.onchange = drawTrials;

  async function drawCurves() {
    const metric = metricSel.value || metricChosen;
    const seeds = seedsBox.checked ? 1 : 0;
    const data = await api(`${base}/curves?metric=${encodeURIComponent(metric)}&seeds=${seeds}`);
    await plotCurves(document.getElementById("curves"), data, seeds, null, lastRungs);
  }
  metricSel.onchange = () => drawCurves().catch(report);
  seedsBox.onchange = () => drawCurves().catch(report);

  async function drawAlignment(summary) {
    const div = document.getElementById("alignment");
    if (!summary.metric_columns.includes("align_cos_mean")) {
      div.replaceChildren(el("p", { class: "empty", text: "no alignment reported (align_cos_mean)" }));
      return;
    }
    const data = await api(`${base}/curves?metric=align_cos_mean&seeds=0`);
    await plotCurves(div, data, false, "cos(B[:,0], g)");
  }

  function drawRungs(r) {
    const div = document.getElementById("rungs");
    if (!r.available) { div.replaceChildren(el("p", { class: "empty", text: r.why })); return; }
    const chips = (xs, cls) => el("span", {}, ...xs.map((x) => el("span", { class: "chip " + cls, text: x })));
    const t = el("table", { class: "data", id: "rung-table" },
      el("thead", {}, el("tr", {}, ...["rung", r.time_attr || "epoch", "judged", `cutoff (${r.metric})`, "promoted", "stopped", "waiting"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...r.rungs.map((x) => el("tr", { title: Object.entries(x.group_means).map(([g, v]) => `${g}: ${fmt(v)}`).join("\n") },
        el("td", { class: "num", text: x.rung }), el("td", { class: "num", text: fmt(x.milestone) }),
        el("td", { class: "num", text: x.groups_judged }), el("td", { class: "num", text: x.cutoff === null ? "— (first group)" : fmt(x.cutoff) }),
        el("td", {}, chips(x.promoted, "go")), el("td", {}, chips(x.stopped, "stop")), el("td", {}, chips(x.waiting, "wait"))))));
    div.replaceChildren(t, el("p", { class: "note", text: `mode ${r.mode}, reduction factor η=${r.reduction_factor}: a group continues when its mean is within the top 1/η of the group means recorded at that rung (hover a rung for the means).` }));
  }

  let compareRetry = null;
  function drawCompare(c) {
    const div = document.getElementById("compare");
    clearTimeout(compareRetry);
    if (c.pending || c.stale) {  // being recomputed on the server: ask again shortly
      compareRetry = setTimeout(() => api(`${base}/compare`).then(drawCompare, report), 1000);
    }
    if (c.pending) { div.replaceChildren(el("p", { class: "empty", text: c.why })); return; }
    if (!c.rows.length) { div.replaceChildren(el("p", { class: "empty", text: c.why || "nothing to compare" })); return; }
    const strata = c.strata || [];
    const t = el("table", { class: "data", id: "compare-table" },
      el("thead", {}, el("tr", {}, ...[...strata, "arm1", "arm2", "n", "mean1", "mean2", "diff", "95% CI", "test", "p", "p (Holm)", "verdict"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...c.rows.map((r) => el("tr", {},
        ...strata.map((s) => el("td", { text: fmt(r[s]) })),
        el("td", { text: r.arm1 }), el("td", { text: r.arm2 }),
        el("td", { class: "num", text: r.n1 === r.n2 ? r.n1 : `${r.n1} / ${r.n2}` }),
        el("td", { class: "num", text: fmt(r.mean1) }), el("td", { class: "num", text: fmt(r.mean2) }),
        el("td", { class: "num", text: fmt(r.diff) }),
        el("td", { class: "num", text: r.diff_ci_low === null ? "" : `${fmt(r.diff_ci_low)} .. ${fmt(r.diff_ci_high)}` }),
        el("td", { text: r.test }), el("td", { class: "num", text: fmt(r.p_exact, 2) }), el("td", { class: "num", text: fmt(r.p_holm, 2) }),
        el("td", { class: "verdict" + (/ (higher|lower) than /.test(r.verdict) ? " resolved" : ""), text: r.verdict })))));
    div.replaceChildren(t, el("p", { class: "note", text: (c.stale ? "(updating: the sweep changed since this table) " : "") +
      `${c.metric} at ${c.at}. ` + c.rows.map((r) => r.sample_size).join(" · ") }));
  }

  async function drawSequential(q) {
    const div = document.getElementById("sequential");
    if (!q.available) { div.replaceChildren(el("p", { class: "empty", text: q.why })); return; }
    const s = q.summary || {};
    const head = el("p", { class: "note", text: `${s.metric} at epoch ${s.epoch}, diff = first arm − other; ` +
      `α = ${s.alpha} family-wise over ${s.comparisons} comparison(s) (${fmt(s.alpha_each, 3)} each); ` +
      `${q.rounds} extra round(s); ${fmt(s.spent_device_hours, 3)} device-hours` +
      (s.budget_device_hours ? ` of ${s.budget_device_hours}` : "") + (q.ended ? ` · ended: ${q.ended.reason}` : "") });
    const blocks = [head];
    const charts = q.comparisons.map(() => el("div", { class: "chart small sequential-chart" }));
    q.comparisons.forEach((c, i) => blocks.push(el("h3", { text: c.comparison }),
      el("p", { class: "verdict" + (c.status === "decided" ? " resolved" : ""), text: c.verdict }), charts[i]));
    div.replaceChildren(...blocks);  // attached before plotting: Plotly sizes a chart from its element
    for (const [i, c] of q.comparisons.entries()) {
      const chart = charts[i];
      if (!c.n.length) { chart.replaceChildren(el("p", { class: "empty", text: "no look yet (the first is at 2 paired seeds)" })); continue; }
      const finite = (xs, fill) => xs.map((v) => (v === null ? fill : v));
      const spread = Math.max(...c.mean.map((m) => Math.abs(m ?? 0))) * 4 || 1;
      const traces = [
        { x: c.n, y: finite(c.cs_high, spread), mode: "lines", line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
        { x: c.n, y: finite(c.cs_low, -spread), mode: "lines", fill: "tonexty", fillcolor: "rgba(70,110,200,0.2)", line: { width: 0 }, name: "confidence sequence" },
        { x: c.n, y: c.mean, mode: "lines+markers", name: "mean difference", text: c.seed.map((sd, i) => `seed ${sd}, e=${fmt(c.e_value[i], 3)}, ${c.decision[i]}`) },
        { x: c.n, y: c.e_value, yaxis: "y2", mode: "lines", line: { dash: "dot" }, name: "e-value" },
      ];
      const shapes = [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#888" } }];
      if (s.min_effect) for (const y of [s.min_effect, -s.min_effect]) shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: y, y1: y, line: { color: "#aaa", dash: "dash" } });
      if (c.status === "decided") shapes.push({ type: "line", yref: "paper", x0: c.n[c.n.length - 1], x1: c.n[c.n.length - 1], y0: 0, y1: 1, line: { color: "#2a2" } });
      await Plotly.react(chart, traces, { margin: { t: 10, r: 50, b: 35, l: 55 }, height: 240, shapes,
        xaxis: { title: "seeds", dtick: 1 }, yaxis: { title: "difference", range: [-spread, spread] },
        yaxis2: { title: "e-value", overlaying: "y", side: "right", type: "log" }, legend: { orientation: "h" } }, { displayModeBar: false });
    }
  }

  async function refresh() {
    // the comparison (exact / Monte Carlo permutation tests) may take longest: it is drawn when it
    // arrives, the rest of the page does not wait for it
    const comparing = api(`${base}/compare`).then(drawCompare,
      (err) => drawCompare({ rows: [], why: "comparison not available: " + err.message }));
    const [summary, trials, rungs, spec, sequential] = await Promise.all([
      api(`${base}/summary`), api(`${base}/trials`), api(`${base}/rungs`), api(`${base}/spec`), api(`${base}/sequential`),
    ]);
    const state = document.getElementById("state");
    state.textContent = summary.state; state.className = "badge " + summary.state;
    const counts = Object.entries(summary.trials).map(([s, n]) => `${n} ${s.toLowerCase()}`).join(", ") || "none yet";
    document.getElementById("summary").replaceChildren(
      el("span", {}, el("b", { text: summary.n_trials }), ` trials (${counts}) · ${summary.backbones.join(", ")} · `,
        `${summary.scheduler} · ${summary.epochs ?? "?"} epochs · ${fmt(summary.cpu_hours, 3)} CPU h` +
        (summary.gpu_hours ? ` · ${fmt(summary.gpu_hours, 3)} GPU h` : "") +
        ` · started ${when(summary.started)} · last report ${when(summary.last_report)}`));
    const cols = summary.metric_columns;
    metricChosen = metricSel.value || summary.metric;
    if (metricSel.options.length !== cols.length) {
      metricSel.replaceChildren(...cols.map((m) => el("option", { value: m, text: m })));
    }
    if (cols.includes(metricChosen)) metricSel.value = metricChosen;
    trialData = trials;
    const statuses = [...new Set(trials.trials.map((r) => r.status))].sort();
    const keep = statusSel.value;
    statusSel.replaceChildren(el("option", { value: "", text: "all" }), ...statuses.map((s) => el("option", { value: s, text: s })));
    statusSel.value = statuses.includes(keep) ? keep : "";
    drawTrials();
    drawRungs(rungs);
    lastRungs = rungs;
    await drawSequential(sequential);
    document.getElementById("spec-yaml").textContent = spec.yaml || "(no spec.json)";
    document.getElementById("reproduce").textContent = spec.reproduce || "";
    document.getElementById("resume").textContent = spec.resume || "";
    if (cols.length) {
      await drawCurves();
      await drawAlignment(summary);
    } else {
      await plotCurves(document.getElementById("curves"), { metric: metricChosen, groups: [] }, false);
      document.getElementById("alignment").replaceChildren(el("p", { class: "empty", text: "no reports yet" }));
    }
    document.getElementById("footer").textContent = `data version ${summary.version}`;
    await comparing;
  }
  live(`${base}/version`, refresh);
}

function report(err) {
  window.__dash.errors.push(String(err));
  console.error(err);
}

// ------------------------------------------------------------------------------------ index page
async function indexPage() {
  async function refresh() {
    const data = await api("/api/sweeps");
    const tbody = document.querySelector("#sweeps tbody");
    if (!data.sweeps.length) { tbody.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "empty", text: "no sweeps here yet" }))); return; }
    tbody.replaceChildren(...data.sweeps.map((s) => {
      const link = el("a", { href: `/sweep/${encodeURIComponent(s.name)}`, "data-keep-token": "", text: s.name });
      const axes = Object.entries(s.axes).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("|") : JSON.stringify(v)}`).join("; ");
      return el("tr", {}, el("td", {}, link), el("td", {}, el("span", { class: "badge " + s.state, text: s.state })),
        el("td", { text: `${s.backbones.join(", ")} · ${axes} · ${s.scheduler} · ${s.epochs ?? "?"} epochs` }),
        el("td", { text: Object.entries(s.trials).map(([k, n]) => `${n} ${k.toLowerCase()}`).join(", ") }),
        el("td", { class: "num", text: fmt(s.cpu_hours, 3) }), el("td", { class: "num", text: fmt(s.gpu_hours, 3) }),
        el("td", { text: when(s.started) }), el("td", { text: when(s.last_report) }));
    }));
    keepToken();
  }
  live("/api/version", refresh);
}

// ------------------------------------------------------------------------------ calibration page
async function calibrationPage() {
  const name = document.body.dataset.sweep;
  async function refresh() {
    const data = await api(`/api/sweeps/${encodeURIComponent(name)}/calibration`);
    const sel = document.getElementById("selected");
    const layers = new Set(data.selected.flatMap((s) => s.layers));
    sel.replaceChildren(...(data.selected.length ? data.selected.map((s) => el("p", {},
      el("b", { text: `${s.backbone}: layers ${s.layers.join(", ")}` }),
      ` selected by ${s.selection} (top_k ${s.top_k}) for ${s.n_trials} trial(s), inits ${s.inits.join(", ")}` +
      (s.vision_layers.length ? `; vision layers ${s.vision_layers.join(", ")}` : ""))) :
      [el("p", { class: "empty", text: "no trial has recorded its selected layers yet" })]));
    const box = document.getElementById("artifacts");
    if (!data.artifacts.length) { box.replaceChildren(el("p", { class: "empty", text: "no GapArtifact for this sweep's backbones under <storage>/_cache/gaps" })); return; }
    box.replaceChildren();
    for (const a of data.artifacts) {
      const chart = el("div", { class: "chart small" });
      box.append(el("h2", {}, `GapArtifact ${a.key}`, el("small", { text: `${a.backbone} · ${a.num_samples} pairs · pooling ${a.pooling} · passes ${a.passes}` })), chart);
      const res = a.modules.filter((m) => m.kind === "residual");
      const rows = res.length ? res : a.modules;
      const x = rows.map((m) => `L${m.layer}` + (res.length ? "" : ` ${m.kind}`));
      await Plotly.react(chart, [
        { x, y: rows.map((m) => m.gap_norm), type: "bar", name: "gap norm", marker: { color: rows.map((m) => layers.has(m.layer) ? "#1f77b4" : "#aec7e8") } },
        { x, y: rows.map((m) => m.spot_score), type: "scatter", mode: "lines+markers", name: "SPOT-Gap score", yaxis: "y2", line: { color: "#d62728" } },
      ], { margin: { l: 50, r: 50, t: 10, b: 40 }, yaxis: { title: { text: "‖mean gap‖" } },
        yaxis2: { title: { text: "SPOT score" }, overlaying: "y", side: "right" }, legend: { orientation: "h", y: -0.2 },
        paper_bgcolor: "#fff", plot_bgcolor: "#fff" }, { displaylogo: false, responsive: true });
      const t = el("table", { class: "data" }, el("thead"), el("tbody"));
      sortableTable(t, [
        { label: "layer", value: (m) => m.layer }, { label: "module", value: (m) => m.kind },
        { label: "selected", value: (m) => layers.has(m.layer) ? "yes" : "" },
        { label: "gap norm", value: (m) => m.gap_norm }, { label: "SPOT score", value: (m) => m.spot_score },
        { label: "first share", value: (m) => m.first_share }, { label: "translation share", value: (m) => m.translation_share },
        { label: "name", value: (m) => m.module, cls: "path" },
      ], a.modules, { col: null, dir: 1 });
      box.append(t);
    }
  }
  live(`/api/sweeps/${encodeURIComponent(name)}/version`, refresh);
}

document.addEventListener("DOMContentLoaded", () => {
  keepToken();
  const page = document.body.dataset.page;
  const run = { sweep: sweepPage, index: indexPage, calibration: calibrationPage }[page];
  if (run) run().catch(report);
});
