"use strict";
// ferlite serve: four read-only views of the results log, built with the DOM (text only, never HTML
// from data) and small SVG charts drawn here; every figure comes from the JSON routes unchanged.

const COLORS = { angry: "#d1495b", disgust: "#6a994e", fear: "#7b2cbf", happy: "#edae49", sad: "#00798c",
                 surprise: "#f4845f", neutral: "#8d99ae", contempt: "#5c4d7d" };
const hue = (label) => [...label].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);
const color = (label) => COLORS[label] || `hsl(${hue(label)} 45% 55%)`;
const NUMERIC = new Set(["run", "frames", "skipped", "failed reads", "faces", "tracks", "uncertain", "track",
  "duration (s)"]);
const th = (name) => el("th", NUMERIC.has(name) ? { class: "num" } : {}, name);
let timer = null;
let shown = 0; // which show() call may draw: a slow answer for a view left meanwhile is dropped

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.map((c) => (c === null || c === undefined ? "" : c)));
  return node;
}

function svg(tag, attrs = {}, text = "") {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

async function get(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const num = (value, field) => el("td", { class: "num", "data-field": field }, value === null ? "–" : String(value));
const time = (utc) => (utc ? utc.slice(0, 19).replace("T", " ") : "–");
const base = (path) => String(path).split("/").pop();

// A horizontal bar split by label: [[label, count], ...].
function shares(pairs) {
  const total = pairs.reduce((s, [, n]) => s + n, 0) || 1;
  const bar = el("div", { class: "bar shares" });
  for (const [label, n] of pairs) {
    const part = el("span", { title: `${label} ${n}` });
    part.style.width = `${(100 * n) / total}%`;
    part.style.background = color(label);
    bar.append(part);
  }
  return bar;
}

function legend(labels) {
  return el("div", { class: "legend" }, ...labels.map((label) => {
    const swatch = el("i");
    swatch.style.background = color(label);
    return el("span", {}, swatch, label);
  }));
}

// Each view returns the nodes to show. Now: the faces of the latest frame of each running run.
async function now() {
  const data = await get("/api/now");
  const runs = data.runs.map((run) => {
    const latest = run.frame ?? null;
    const head = el("h2", { "data-run": run.run },
      `Run ${run.run}${run.device ? ` on ${run.device}` : ""} · ${base(run.source)} · `,
      el("span", { "data-field": "frames" }, String(run.frames)), " frames processed",
      ...(latest === null ? [] : [" · latest frame ", el("span", { "data-field": "frame" }, String(latest))]));
    if (run.privacy) {
      const counts = Object.entries(run.minute);
      return el("section", {}, head, el("p", { class: "muted" },
        "Privacy run: no faces are stored, only counts per minute. This minute: "),
        counts.length ? el("div", {}, shares(counts), legend(counts.map(([label]) => label)),
          ...counts.map(([label, n]) => el("div", { "data-label": label }, `${label} ${n}`)))
          : el("p", {}, "no faces yet this minute"));
    }
    if (run.reported) {
      const counts = Object.entries(run.reported.labels);
      return el("section", {}, head, el("p", { class: "muted" },
        `As ${run.device} reported at ${run.reported.time_utc.slice(11, 19)} UTC: `,
        el("span", { "data-field": "reported" }, String(run.reported.faces)), " face(s) in view"),
        counts.length ? el("div", {}, shares(counts), legend(counts.map(([label]) => label)),
          ...counts.map(([label, n]) => el("div", { "data-label": label }, `${label} ${n}`))) : "");
    }
    if (!run.faces.length) return el("section", {}, head, el("p", { class: "muted" }, "No face in view."));
    const cards = run.faces.map((face) => faceCard(face, run.labels));
    return el("section", {}, head, el("div", { class: "faces" }, ...cards));
  });
  return runs.length ? runs : [el("p", { class: "muted" }, "No run is writing to this log now.")];
}

function faceCard(face, labels) {
  const seen = `${face.seen_at_least ? "≥ " : ""}${face.seen_s.toFixed(1)} s`;
  const rows = (labels.length ? labels : Object.keys(face.probs)).map((label) => {
    const p = face.probs[label] || 0;
    const fill = el("span");
    fill.style.width = `${100 * p}%`;
    fill.style.background = color(label);
    return el("div", { class: "prob" }, el("span", {}, label), el("div", { class: "bar" }, fill),
      el("span", { class: "num" }, p.toFixed(2)));
  });
  return el("div", { class: "face", "data-track": face.track },
    el("div", { class: "top" }, el("span", {}, `track ${face.track}`),
      el("span", { "data-field": "label" }, face.label + (face.uncertain ? " (uncertain)" : ""))),
    el("div", { class: "muted" }, "seen for ", el("span", { "data-field": "seen", "data-seconds": face.seen_s }, seen)),
    ...rows);
}

// Timeline: shares of each label per bucket (minute, hour or day, as the range grows).
async function timeline(query) {
  const data = await get(`/api/timeline?${query}`);
  const input = (name) => el("input", { type: "datetime-local", name,
    value: query.get(name) || (data[name] || "").slice(0, 16) });
  const from = input("from");
  const to = input("to");
  const go = (params) => { location.hash = `timeline?${new URLSearchParams(params)}`; };
  const last = (hours) => () => {
    const end = new Date(Date.now() + 60000);
    const start = new Date(end - hours * 3600000);
    go({ from: start.toISOString().slice(0, 16), to: end.toISOString().slice(0, 16) });
  };
  const controls = el("div", { class: "controls" }, "From", from, "to", to, " (UTC)",
    el("button", { onclick: () => go({ from: from.value, to: to.value }) }, "Show"),
    el("button", { onclick: last(1) }, "Last hour"), el("button", { onclick: last(24) }, "Last day"),
    el("button", { onclick: last(24 * 7) }, "Last week"), el("button", { onclick: () => go({}) }, "All"));
  const labels = Object.keys(data.series);
  const totals = el("table", {}, el("tr", {}, el("th", {}, "label"), el("th", { class: "num" }, "faces"),
    el("th", { class: "num" }, "share")));
  const sum = Object.values(data.totals).reduce((s, n) => s + n, 0);
  for (const label of labels.sort((a, b) => data.totals[b] - data.totals[a])) {
    totals.append(el("tr", { "data-label": label }, el("td", {}, label), num(data.totals[label], "faces"),
      el("td", { class: "num" }, `${((100 * data.totals[label]) / (sum || 1)).toFixed(1)} %`)));
  }
  return [controls,
    el("h2", {}, `Faces per label per ${data.bucket}, ${time(data.from)} to ${time(data.to)} UTC: `,
      el("span", { "data-field": "total" }, String(sum)), " faces"),
    chart(data.buckets, data.series, document.getElementById("view").clientWidth), legend(labels), totals];
}

function chart(buckets, series, room) {
  const width = Math.max(room, 400), height = 240, pad = 24;
  const box = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}` });
  const step = (width - 2 * pad) / Math.max(buckets.length, 1);
  const bar = Math.min(Math.max(step - 1, 0.5), 60);
  buckets.forEach((bucket, i) => {
    const total = Object.values(series).reduce((s, counts) => s + counts[i], 0);
    let y = height - pad;
    for (const [label, counts] of Object.entries(series)) {
      if (!counts[i]) continue;
      const h = ((height - 2 * pad) * counts[i]) / total;
      y -= h;
      const rect = svg("rect", { x: pad + i * step + (step - bar) / 2, y, width: bar, height: h, fill: color(label) });
      rect.append(svg("title", {}, `${bucket}: ${label} ${counts[i]} of ${total}`));
      box.append(rect);
    }
  });
  const ticks = buckets.length ? [0, Math.floor(buckets.length / 2), buckets.length - 1] : [];
  for (const i of new Set(ticks)) {
    box.append(svg("text", { x: pad + i * step + (step - bar) / 2, y: height - 6 }, buckets[i].replace("T", " ")));
  }
  box.append(svg("text", { x: 2, y: pad }, "100%"), svg("text", { x: 2, y: height - pad }, "0"));
  return box;
}

// Runs: summarize()'s figures per run, the same as `ferlite log summary --json`.
async function runs() {
  const data = await get("/api/runs");
  const several = data.devices.length > 1;
  const head = ["run", ...(several ? ["device"] : []), "source", "detector", "bundle", "started (UTC)", "stopped",
    "state", "frames", "skipped", "failed reads", "faces", "tracks", "uncertain", "faces per label", ""];
  const table = el("table", {}, el("tr", {}, ...head.map(th)));
  for (const run of data.runs) {
    const pairs = Object.entries(run.by_label);
    const device = run.device_run === undefined ? run.device : `${run.device} (its run ${run.device_run})`;
    table.append(el("tr", { "data-run": run.id }, num(run.id, "id"), ...(several ? [el("td", {}, device)] : []),
      el("td", { title: run.source }, base(run.source)), el("td", {}, run.detector), el("td", {}, run.bundle),
      el("td", {}, time(run.started_utc)), el("td", {}, run.stopped_utc ? time(run.stopped_utc).slice(11) : "–"),
      el("td", { "data-field": "state" }, run.state),
      num(run.frames, "frames"), num(run.skipped, "skipped"), num(run.read_failures, "read_failures"),
      num(run.faces, "faces"), num(run.tracks, "tracks"), num(run.uncertain, "uncertain"),
      el("td", { class: "wrap" }, shares(pairs), el("span", { class: "muted" },
        run.privacy ? "privacy: counts only " : "", pairs.map(([l, n]) => `${l} ${n}`).join(", "))),
      el("td", {}, el("a", { href: `#tracks?run=${run.id}` }, "tracks"))));
  }
  return [el("h2", {}, `${data.runs.length} runs`), table];
}

// Tracks: for one run, each track's duration and label shares; a saved face only on a click.
async function tracks(query) {
  const all = (await get("/api/runs")).runs;
  if (!all.length) return [el("p", { class: "muted" }, "No runs in this log.")];
  const run = Number(query.get("run") || all[all.length - 1].id);
  const data = await get(`/api/tracks?run=${run}`);
  const pick = el("select", { onchange: (e) => { location.hash = `tracks?run=${e.target.value}`; } },
    ...all.map((r) => el("option", { value: r.id, ...(r.id === run ? { selected: "" } : {}) },
      `run ${r.id}${r.device ? ` (${r.device})` : ""} · ${time(r.started_utc)}`)));
  const controls = el("div", { class: "controls" }, "Run", pick);
  if (data.privacy) {
    return [controls, el("p", { class: "muted" }, "Privacy run: no tracks are stored.")];
  }
  const table = el("table", {}, el("tr", {}, ...["track", "first seen (UTC)", "duration (s)", "faces",
    "label shares", ""].map(th)));
  for (const track of data.tracks) {
    const pairs = Object.entries(track.by_label);
    const cell = el("td");
    if (data.saved_faces) {
      const crop = () => el("img", { class: "crop", alt: `track ${track.track}`,
        src: `/api/face?run=${run}&track=${track.track}` });
      cell.append(el("button", { onclick: (e) => e.target.replaceWith(crop()) }, "show face"));
    }
    table.append(el("tr", { "data-track": track.track }, num(track.track, "track"), el("td", {}, time(track.first_utc)),
      num(track.duration_s.toFixed(1), "duration"), num(track.faces, "faces"),
      el("td", { class: "wrap" }, shares(pairs), el("span", { class: "muted" },
        pairs.map(([l, n]) => `${l} ${n}`).join(", "))), cell));
  }
  const shown = data.total > data.tracks.length ? ` (the first ${data.tracks.length} shown)` : "";
  return [controls, el("h2", {}, `Run ${run}: `, el("span", { "data-field": "total" }, String(data.total)),
    ` tracks${shown}`), table];
}

const views = { now, timeline, runs, tracks };

async function show() {
  clearTimeout(timer);
  const mine = ++shown;
  const [name, query] = location.hash.slice(1).split("?");
  const view = views[name] ? name : "now";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === view);
  document.getElementById("clock").textContent = `${new Date().toISOString().slice(0, 19).replace("T", " ")} UTC`;
  let nodes;
  try {
    nodes = await views[view](new URLSearchParams(query || ""));
  } catch (error) {
    nodes = [el("p", { class: "error" }, error.message)];
  }
  if (mine !== shown) return;
  const main = document.getElementById("view");
  main.replaceChildren(...nodes);
  main.dataset.view = view;
  if (view === "now") timer = setTimeout(show, 1000); // live without reloading: the next answer in a second
}

window.addEventListener("hashchange", show);
show();
