// LimeDB dashboard: polls the node that served this page and redraws. No third-party code.
// Reads GET /admin/status, /admin/cluster-stats and (when the epoch changes) /api/v1/cluster/ring,
// all as an admin: a user with role admin (Basic) once users exist, else the cluster secret in
// X-Cluster-Secret (asked once, kept in sessionStorage).
"use strict";

const POLL_MS = 1000;
const SECRET_KEY = "limedb-cluster-secret";
const BASIC_KEY = "limedb-admin-basic";
const DISK_NEARLY_FULL = 0.9;
const HINTS_PILING_UP = 10000;
const PALETTE = ["#7cb518", "#1b998b", "#3a86ff", "#8338ec", "#ff006e", "#fb5607", "#ffbe0b",
  "#2d6a4f", "#6d597a", "#e76f51", "#264653", "#b5838d"];

const view = {
  secret: sessionStorage.getItem(SECRET_KEY),
  basic: sessionStorage.getItem(BASIC_KEY), // base64 of "user:password"
  ring: null,
  ringEpoch: null,
  colors: new Map(),
  previous: new Map(), // node id -> last stats reading, for rates and interval percentiles
  timer: null,
};

class AuthError extends Error {}

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path) {
  const headers = {};
  if (view.basic) headers["Authorization"] = `Basic ${view.basic}`;
  else if (view.secret) headers["X-Cluster-Secret"] = view.secret;
  // credentials "omit": the page authenticates with its header only, and a 401 that carries a
  // Basic challenge (the node's, once client authentication exists) must come back to this code
  // instead of opening the browser's own password dialog, which would block the fetch.
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  if (response.status === 401 || response.status === 403) {
    let message = "refused";
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new AuthError(message);
  }
  if (!response.ok) throw new Error(`${path} answered ${response.status}`);
  return response.json();
}

// ---------------------------------------------------------------- formatting

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function ago(ms) {
  if (!ms) return "never";
  return `${duration((Date.now() - ms) / 1000)} ago`;
}

function millis(seconds) {
  if (seconds === null) return "–";
  return seconds < 0.001 ? `${(seconds * 1000).toFixed(2)} ms` : `${(seconds * 1000).toFixed(1)} ms`;
}

function shortName(url) {
  return url.replace(/^https?:\/\//, "");
}

function colorOf(url) {
  if (!view.colors.has(url)) view.colors.set(url, PALETTE[view.colors.size % PALETTE.length]);
  return view.colors.get(url);
}

// ---------------------------------------------------------------- latency from buckets

// The q-quantile of the requests counted between two readings of the bucket counts, linear
// within a bucket (as Prometheus' histogram_quantile); null when no request was served.
function quantile(q, bounds, counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i += 1) {
    if (seen + counts[i] >= rank && counts[i] > 0) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const low = i === 0 ? 0 : bounds[i - 1];
      return low + (bounds[i] - low) * ((rank - seen) / counts[i]);
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1];
}

function interval(nodeId, stats) {
  const now = stats.requests;
  const resp = stats.resp ? stats.resp.total : null;
  const before = view.previous.get(nodeId);
  view.previous.set(nodeId, { time: stats.time_ms, requests: now, resp });
  const latency = now.latency;
  if (!before || stats.time_ms <= before.time || now.total < before.requests.total) {
    // First reading (or a restart): totals since the node started.
    return { rate: null, respRate: null, counts: latency.counts, bounds: latency.bounds_s };
  }
  const seconds = (stats.time_ms - before.time) / 1000;
  const counts = latency.counts.map((c, i) => c - (before.requests.latency.counts[i] || 0));
  const respRate = resp === null || before.resp === null || resp < before.resp ? null :
    (resp - before.resp) / seconds;
  return {
    rate: (now.total - before.requests.total) / seconds, respRate, counts, bounds: latency.bounds_s,
  };
}

// ---------------------------------------------------------------- ring

function arc(startDeg, sizeDeg, outer, inner) {
  const rad = (d) => ((d - 90) * Math.PI) / 180;
  const end = startDeg + Math.min(sizeDeg, 359.999);
  const large = end - startDeg > 180 ? 1 : 0;
  const p = (r, d) => `${(r * Math.cos(rad(d))).toFixed(3)} ${(r * Math.sin(rad(d))).toFixed(3)}`;
  return `M ${p(outer, startDeg)} A ${outer} ${outer} 0 ${large} 1 ${p(outer, end)} ` +
    `L ${p(inner, end)} A ${inner} ${inner} 0 ${large} 0 ${p(inner, startDeg)} Z`;
}

function renderRing(ring) {
  const svg = $("ring");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const shares = [];
  for (const url of Object.keys(ring.rangesDegrees).sort()) {
    let degrees = 0;
    for (const r of ring.rangesDegrees[url]) {
      degrees += r.sizeDegrees;
      const path = document.createElementNS(ns, "path");
      path.setAttribute("d", arc(r.startDegrees, r.sizeDegrees, 100, 62));
      path.setAttribute("fill", colorOf(url));
      svg.append(path);
    }
    shares.push({ url, share: degrees / 360, vnodes: ring.virtualNodeDistribution[url] || 0 });
  }
  const list = $("ownership");
  list.replaceChildren(...shares.map(({ url, share, vnodes }) => {
    const fill = el("span");
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    fill.style.background = colorOf(url);
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = colorOf(url);
    return el("li", { "data-url": url, "data-share": share.toFixed(4) }, swatch,
      el("span", {}, shortName(url)), el("span", { class: "share" }, fill),
      el("span", { class: "muted" }, `${(share * 100).toFixed(1)}% · ${vnodes} vnodes`));
  }));
  $("ring-summary").textContent =
    `${shares.length} owners · ${ring.virtualNodes} virtual nodes`;
}

// ---------------------------------------------------------------- members, transition, nodes

function liveness(member, stats) {
  if (member.liveness === "dead" || (stats && !stats.reachable)) return "down";
  if (member.liveness === "suspect") return "suspect";
  return "up";
}

function renderMembers(members, byId) {
  const rows = members.map((m) => {
    const stats = byId.get(m.node_id);
    const state = liveness(m, stats);
    const reasons = [];
    if (m.liveness !== "alive") reasons.push(`failure detector: ${m.liveness}`);
    if (stats && stats.error) reasons.push(stats.error);
    const detail = state === "down" ? `down (${reasons.join("; ")})` : m.liveness;
    return el("tr", { class: state, "data-node-id": m.node_id, "data-url": m.url,
      "data-state": m.state, "data-liveness": state },
    el("td", {}, shortName(m.url)), el("td", { class: "state" }, m.state),
    el("td", { class: "liveness" }, detail));
  });
  $("members").tBodies[0].replaceChildren(...rows);
}

function renderTransition(status) {
  const box = $("transition");
  const t = status.transition;
  const fill = $("progress-fill");
  const bar = $("progress");
  if (!t) {
    box.dataset.phase = "none";
    box.dataset.fraction = "0";
    $("transition-title").textContent = "no transition running";
    $("transition-detail").textContent = "";
    fill.style.width = "0";
    bar.setAttribute("aria-valuenow", "0");
  } else {
    const fraction = t.phase === "streaming" || t.phase === "proposed" ? t.fraction : 1;
    box.dataset.phase = t.phase;
    box.dataset.fraction = String(fraction);
    box.dataset.id = t.id;
    $("transition-title").textContent =
      `${t.change || t.kind} · ${t.phase} · epoch ${t.from_epoch} → ${t.to_epoch}`;
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    bar.setAttribute("aria-valuenow", (fraction * 100).toFixed(1));
    $("transition-detail").textContent =
      `ranges ${t.ranges_moved}/${t.ranges_total} · ${t.keys_streamed} keys · ` +
      `${bytes(t.bytes_streamed)} · ${(t.rate / 1e6).toFixed(2)} MB/s · ` +
      `ETA ${t.eta_s === null || t.eta_s === undefined ? "–" : duration(t.eta_s)}`;
  }
  const last = status.last_transition;
  $("last-transition").textContent = last && !t ?
    `last: ${last.change || last.kind} ${last.phase}${last.reason ? ` (${last.reason})` : ""}` : "";
}

function repairText(run) {
  if (!run) return "never";
  if (run.finished_ms === null) return "running";
  const what = run.error ? `failed: ${run.error}` :
    `${run.keys_repaired} keys, ${run.ranges_differing} ranges differed`;
  return `${ago(run.finished_ms)} (${what})`;
}

function verificationText(run) {
  if (!run) return "never";
  if (run.finished_ms === null) return "running";
  if (run.error) return `${ago(run.finished_ms)} (failed)`;
  const verdict = run.ranges_differing ? `${run.ranges_differing} ranges differed` : "consistent";
  return `${ago(run.finished_ms)} (${run.ranges_compared}/${run.ranges_total} ranges, ${verdict})`;
}

function renderNodes(nodes) {
  const rows = nodes.map((n) => {
    const s = n.stats;
    if (!s) {
      view.previous.delete(n.node_id);
      return el("tr", { class: "down", "data-node-id": n.node_id },
        el("td", {}, shortName(n.url)), el("td", { colSpan: 11 }, n.error || "unreachable"));
    }
    const { rate, respRate, counts, bounds } = interval(n.node_id, s);
    const p = (q) => millis(quantile(q, bounds, counts));
    const disk = s.disk.used_fraction === undefined ? "–" :
      `${(s.disk.used_fraction * 100).toFixed(1)}% of ${bytes(s.disk.total_bytes)}`;
    const repair = s.repair || {};
    const num = (text) => el("td", { class: "num" }, text);
    return el("tr", { class: "up", "data-node-id": n.node_id },
      el("td", {}, shortName(n.url)),
      num(rate === null ? "–" : rate.toFixed(1)),
      num(s.resp === null ? "off" : respRate === null ? "–" : respRate.toFixed(1)),
      num(p(0.5)), num(p(0.95)), num(p(0.99)),
      num(bytes(s.storage.bytes)), num(disk), num(String(s.hints.pending)),
      num(`${s.clock.offset_ms} ms`),
      el("td", {}, repairText(repair.last_repaired)), el("td", {}, verificationText(repair.last)));
  });
  $("nodes").tBodies[0].replaceChildren(...rows);
}

function alerts(members, byId) {
  const found = [];
  for (const m of members) {
    if (liveness(m, byId.get(m.node_id)) === "down") {
      found.push(["critical", `node down: ${shortName(m.url)}`]);
    }
  }
  for (const n of byId.values()) {
    const s = n.stats;
    if (!s) continue;
    const name = shortName(n.url);
    const { offset_ms: offset, max_offset_ms: bound, writes_allowed: allowed } = s.clock;
    if (allowed === false) found.push(["critical", `clock offset: ${name} refuses writes`]);
    else if (bound && Math.abs(offset) > bound / 2) {
      found.push(["warning", `clock offset: ${name} is ${offset} ms off (max ${bound} ms)`]);
    }
    if (s.storage.disk_full) found.push(["critical", `disk full: ${name} refuses writes`]);
    else if (s.disk.used_fraction >= DISK_NEARLY_FULL) {
      found.push(["warning", `disk nearly full: ${name} at ${(s.disk.used_fraction * 100).toFixed(1)}%`]);
    }
    if (s.storage.out_of_descriptors) {
      found.push(["critical", `out of file descriptors: ${name} refuses writes`]);
    }
    if (s.hints.pending > HINTS_PILING_UP) {
      found.push(["warning", `hints piling up: ${name} holds ${s.hints.pending}`]);
    }
  }
  const list = $("alerts");
  list.replaceChildren(...(found.length ? found.map(([level, text]) =>
    el("li", { class: level, "data-level": level }, text)) : [el("li", { class: "ok" }, "none")]));
}

// ---------------------------------------------------------------- the loop

async function refresh() {
  const [status, cluster] = await Promise.all([api("/admin/status"), api("/admin/cluster-stats")]);
  if (view.ring === null || view.ringEpoch !== status.epoch) {
    view.ring = await api("/api/v1/cluster/ring");
    view.ringEpoch = status.epoch;
    renderRing(view.ring);
  }
  const epoch = $("epoch");
  epoch.textContent = `epoch ${status.epoch}`;
  epoch.dataset.epoch = String(status.epoch);
  $("served-by").textContent = `via ${shortName(status.node_id)}`;
  const byId = new Map(cluster.nodes.map((n) => [n.node_id, n]));
  // A member that left is no longer part of the cluster: it is not listed.
  const members = status.members.filter((m) => m.state !== "Left");
  renderMembers(members, byId);
  renderTransition(status);
  renderNodes(cluster.nodes);
  alerts(members, byId);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  $("connection").hidden = true;
}

async function tick() {
  try {
    await refresh();
  } catch (error) {
    if (error instanceof AuthError) {
      showLogin(view.basic || view.secret ? error.message : "");
      return;
    }
    $("connection").textContent = `cannot refresh: ${error.message}`;
    $("connection").hidden = false;
  }
  view.timer = setTimeout(tick, POLL_MS);
}

function showLogin(message) {
  clearTimeout(view.timer);
  $("dashboard").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("user").focus();
}

function start() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  clearTimeout(view.timer);
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user").value;
    // btoa takes Latin-1 only: encode UTF-8 first, as the node decodes Basic credentials.
    const pair = new TextEncoder().encode(`${user}:${$("password").value}`);
    view.basic = user ? btoa(String.fromCharCode(...pair)) : "";
    view.secret = $("secret").value;
    sessionStorage.setItem(BASIC_KEY, view.basic);
    sessionStorage.setItem(SECRET_KEY, view.secret);
    start();
  });
  start(); // a node without a secret (--insecure), or credentials kept from earlier in this tab
});
