// pulsewatch dashboard: hash routes over the JSON API (/api/v1), charts drawn by the server
// as SVG (/charts), live updates from /api/v1/events. No build step, no dependency.
"use strict";

const PAGE = 50;
const view = document.getElementById("view");
const acks = new Map(); // alert_id -> the latest acknowledgement event seen live
const alertsById = new Map(); // alert_id -> the alert as last rendered
let current = null; // the view shown: { refresh() }
let refreshTimer = null;

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(v < 0.1 ? 1 : 0)}%`);
const num = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${v.toFixed(0)} ms`);

function ago(iso) {
  if (!iso) return "never";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (Math.abs(s) < 90) return `${s} s ago`;
  if (Math.abs(s) < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function until(iso) {
  if (!iso) return "–";
  const hours = (Date.parse(iso) - Date.now()) / 3600000;
  return hours < 0 ? "overdue" : hours < 1 ? `in ${Math.round(hours * 60)} min` : `in ${hours.toFixed(1)} h`;
}

const badge = (value, kind) => h("span", { class: `badge ${kind}-${String(value).toLowerCase()}` }, value);
const appLink = (id) => h("a", { href: `#/app/${encodeURIComponent(id)}` }, id);

function feed(text, kind) {
  const list = document.getElementById("feed");
  const item = h("div", { class: `feed-item ${kind}` }, text);
  list.prepend(item);
  while (list.children.length > 5) list.lastChild.remove();
  setTimeout(() => item.remove(), 15000);
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => current && current.refresh(), 800);
}

// ---------------------------------------------------------------- acknowledgements

// The acknowledgement holding for `alert`: the latest seen live, or the one the API gave.
function ackOf(alert) {
  const live = acks.get(alert.alert_id);
  const stored = alert.ack;
  if (live && live.alert_started_at === alert.started_at && (!stored || live.at >= stored.at)) {
    return live.action === "ACK" ? live : null;
  }
  return stored;
}

function ackCell(alert) {
  const cell = h("span", { class: "ack-cell", dataset: { ackFor: alert.alert_id } });
  fillAckCell(cell, alert);
  return cell;
}

function fillAckCell(cell, alert) {
  cell.replaceChildren();
  if (alert.state !== "FIRING") return;
  const ack = ackOf(alert);
  if (ack) {
    cell.append(
      h("span", { class: "acked" }, `Acknowledged by ${ack.by}`, ack.note ? ` — ${ack.note}` : ""),
      " ",
      h("button", { class: "undo", onclick: () => acknowledge(alert, "DELETE") }, "Undo"),
    );
  } else {
    cell.append(h("button", { class: "ack", onclick: () => acknowledge(alert, "POST") }, "Acknowledge"));
  }
}

function updateAckCells(alertId) {
  const alert = alertsById.get(alertId);
  if (!alert) return;
  for (const cell of document.querySelectorAll(`[data-ack-for="${CSS.escape(alertId)}"]`)) fillAckCell(cell, alert);
}

// Asks for name, token and note (remembered in sessionStorage), then sends the change.
function acknowledge(alert, method) {
  const dialog = document.getElementById("ack-dialog");
  const form = document.getElementById("ack-form");
  const token = sessionStorage.getItem("pulsewatch.token");
  const by = sessionStorage.getItem("pulsewatch.by");
  if (method === "DELETE" && token && by) return send(alert, method, { by }, token).catch((e) => feed(e.message, "error"));
  form.by.value = by || "";
  form.token.value = token || "";
  form.note.value = "";
  document.getElementById("ack-what").textContent = `${alert.kind} on ${alert.app_id}`;
  document.getElementById("ack-submit").textContent = method === "POST" ? "Acknowledge" : "Undo";
  document.getElementById("ack-error").textContent = "";
  form.onsubmit = async (event) => {
    event.preventDefault();
    if (event.submitter && event.submitter.value === "cancel") return dialog.close();
    const body = { by: form.by.value.trim() };
    if (method === "POST" && form.note.value.trim()) body.note = form.note.value.trim();
    try {
      await send(alert, method, body, form.token.value.trim());
      sessionStorage.setItem("pulsewatch.by", body.by);
      dialog.close();
    } catch (e) {
      document.getElementById("ack-error").textContent = e.message;
    }
  };
  dialog.showModal();
}

async function send(alert, method, body, token) {
  sessionStorage.setItem("pulsewatch.token", token);
  const r = await fetch(`/api/v1/alerts/${encodeURIComponent(alert.alert_id)}/ack`, {
    method,
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  const answer = await r.json().catch(() => ({}));
  if (r.status === 401 || r.status === 403) sessionStorage.removeItem("pulsewatch.token");
  if (r.status !== 202) throw new Error(answer.error || `${r.status} ${r.statusText}`);
  acks.set(alert.alert_id, answer);
  updateAckCells(alert.alert_id);
}

// ---------------------------------------------------------------- fleet

const SORTS = { app_id: "Application", status: "Status", health: "Health", open_alerts: "Open alerts", last_seen: "Last beat" };

function fleetView() {
  const state = { text: "", status: "", health: "", sort: "health", cursors: [null], page: 0 };
  const tiles = h("section", { class: "tiles", id: "tiles" });
  const rows = h("tbody");
  const pager = h("div", { class: "pager" });
  const search = h("input", { type: "search", id: "search", placeholder: "Search applications…", "aria-label": "search" });
  const select = (name, values) =>
    h("select", { name, "aria-label": name }, h("option", { value: "" }, `any ${name}`), values.map((v) => h("option", { value: v }, v)));
  const status = select("status", ["DOWN", "LATE", "DEGRADED", "UP", "STOPPED"]);
  const health = select("health", ["critical", "warning", "healthy"]);
  const head = h("tr");
  const table = h("table", { class: "apps", id: "apps" }, h("thead", {}, head), rows);
  let searchTimer = null;

  function restart() {
    state.cursors = [null];
    state.page = 0;
    loadPage();
  }
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.text = search.value.trim(); restart(); }, 200);
  });
  status.addEventListener("change", () => { state.status = status.value; restart(); });
  health.addEventListener("change", () => { state.health = health.value; restart(); });

  function drawHead() {
    head.replaceChildren();
    const key = state.sort.replace(/^-/, "");
    const th = (label, sortKey) => {
      if (!sortKey) return h("th", {}, label);
      const arrow = key === sortKey ? (state.sort.startsWith("-") ? " ▼" : " ▲") : "";
      return h("th", { class: "sortable", dataset: { sort: sortKey }, onclick: () => {
        state.sort = state.sort === sortKey ? `-${sortKey}` : sortKey;
        drawHead();
        restart();
      } }, label + arrow);
    };
    head.append(th(SORTS.app_id, "app_id"), th(SORTS.status, "status"), th(SORTS.health, "health"), th("Instances"),
      th(SORTS.open_alerts, "open_alerts"), th("Memory"), th("CPU"), th("Pool"), th(SORTS.last_seen, "last_seen"), th("Memory, 1 h"));
  }

  async function loadPage() {
    const q = new URLSearchParams({ limit: PAGE, sort: state.sort });
    if (state.text) q.set("text", state.text);
    if (state.status) q.set("status", state.status);
    if (state.health) q.set("health", state.health);
    const cursor = state.cursors[state.page];
    if (cursor) q.set("cursor", cursor);
    let page;
    try {
      page = await getJson(`/api/v1/apps?${q}`);
    } catch (e) {
      rows.replaceChildren(h("tr", {}, h("td", { colspan: 10, class: "error" }, e.message)));
      return;
    }
    state.cursors[state.page + 1] = page.next_cursor;
    rows.replaceChildren(...page.apps.map(appRow));
    const first = state.page * PAGE;
    pager.replaceChildren(
      h("button", { disabled: state.page === 0, onclick: () => { state.page--; loadPage(); } }, "‹ Previous"),
      h("span", { id: "count" }, page.total ? `${first + 1}–${first + page.apps.length} of ${page.total}` : "no applications"),
      h("button", { disabled: !page.next_cursor, onclick: () => { state.page++; loadPage(); } }, "Next ›"),
    );
    if (!window.pulsewatchTableReady) {
      window.pulsewatchTableReady = performance.now();
      document.body.dataset.tableReady = "1";
    }
  }

  function appRow(app) {
    const f = app.last_figures || {};
    const poolShare = f.db_pool_size ? f.db_pool_in_use / f.db_pool_size : null;
    return h("tr", { dataset: { app: app.app_id } },
      h("td", {}, appLink(app.app_id)),
      h("td", {}, badge(app.status, "status")),
      h("td", {}, badge(app.health, "health")),
      h("td", { class: "num" }, `${app.instances_up}/${app.instances_total}`),
      h("td", { class: "num" }, app.open_alerts),
      h("td", { class: "num" }, pct(f.memory_used_ratio)),
      h("td", { class: "num" }, pct(f.cpu_ratio)),
      h("td", { class: "num" }, pct(poolShare)),
      h("td", {}, ago(app.last_seen)),
      h("td", {}, h("img", { class: "spark", loading: "lazy", alt: "", width: 120, height: 24,
        src: `/charts/${encodeURIComponent(app.app_id)}/spark.svg` })),
    );
  }

  async function loadTiles() {
    try {
      const [fleet, health] = await Promise.all([getJson("/api/v1/fleet"), getJson("/api/v1/health")]);
      tiles.replaceChildren(...fleetTiles(fleet, health));
    } catch (e) {
      tiles.replaceChildren(h("p", { class: "error" }, e.message));
    }
  }

  drawHead();
  view.replaceChildren(
    tiles,
    h("section", { class: "controls" }, search, status, health),
    table,
    pager,
  );
  loadTiles();
  loadPage();
  return { refresh() { loadTiles(); loadPage(); } };
}

function worst(w, format) {
  return w ? [h("b", {}, format(w.value)), " ", appLink(w.app_id)] : [h("b", {}, "–")];
}

function tile(title, ...lines) {
  return h("div", { class: "tile" }, h("h3", {}, title), lines.map((l) => h("div", { class: "line" }, l)));
}

function fleetTiles(f, health) {
  const by = (m, k) => (m && m[k]) || 0;
  const apps = health.applications;
  const alerts = health.open_alerts;
  return [
    tile("Resources (worst)",
      ["Memory ", ...worst(f.memory_used_ratio, pct)],
      ["CPU ", ...worst(f.cpu_ratio, pct)],
      ["Pool ", ...worst(f.db_pool_ratio, pct)],
      ["Disk ", ...worst(f.disk_used_ratio, pct)]),
    tile("Performance",
      ["Latency p95 ", ...worst(f.latency_p95_ms, ms)],
      ["Error rate ", ...worst(f.error_ratio, pct)],
      ["Slow requests ", h("b", {}, `${num(f.slow_requests_per_s, 1)}/s`)]),
    tile("Health",
      [badge(health.status, "health"), ` ${apps.total} applications`],
      [`${by(apps.by_status, "DOWN")} down · ${by(apps.by_status, "LATE")} late · ${by(apps.by_status, "DEGRADED")} degraded · ${by(apps.by_status, "UP")} up`],
      [h("b", {}, alerts.total), ` open alerts (${by(alerts.by_severity, "CRITICAL")} critical, ${by(alerts.by_severity, "WARNING")} warning)`]),
    tile("Pipeline",
      ["Consumer lag ", h("b", {}, f.pipeline.consumer_lag)],
      ["Beats ", h("b", {}, `${num(f.beats_per_s, 1)}/s`)],
      ["Dead letters ", h("b", {}, f.pipeline.dead_letters)]),
  ];
}

// ---------------------------------------------------------------- one application

const CHARTS = ["memory", "cpu", "pool", "latency", "errors", "sessions"];

function appView(appId) {
  let range = sessionStorage.getItem("pulsewatch.range") || "6h";
  const head = h("section", { class: "app-head" });
  const instances = h("section", { id: "instances" });
  const alertList = h("section", { id: "app-alerts" });
  const ranges = h("div", { class: "ranges" });
  const charts = h("section", { class: "charts", id: "charts" });

  function drawRanges() {
    ranges.replaceChildren(...["1h", "6h", "24h"].map((r) =>
      h("button", { class: r === range ? "on" : "", dataset: { range: r }, onclick: () => {
        range = r;
        sessionStorage.setItem("pulsewatch.range", r);
        drawRanges();
        loadCharts();
      } }, r)));
  }

  async function loadCharts() {
    await Promise.all(CHARTS.map(async (name, i) => {
      const box = charts.children[i];
      const r = await fetch(`/charts/${encodeURIComponent(appId)}/${name}.svg?range=${range}`);
      box.innerHTML = r.ok ? await r.text() : `<p class="error">${name}: ${r.status}</p>`;
    }));
  }

  async function load() {
    let app;
    try {
      app = await getJson(`/api/v1/apps/${encodeURIComponent(appId)}`);
    } catch (e) {
      head.replaceChildren(h("h2", {}, appId), h("p", { class: "error" }, e.message));
      return;
    }
    head.replaceChildren(h("h2", {}, app.app_id, " ", badge(app.status, "status"), " ", badge(app.health, "health")),
      h("p", {}, `${app.instances_up}/${app.instances_total} instances up · last beat ${ago(app.last_seen)}`));
    instances.replaceChildren(h("h3", {}, "Instances"), h("table", { class: "instances" },
      h("thead", {}, h("tr", {}, h("th", {}, "Instance"), h("th", {}, "Status"), h("th", {}, "Last beat"), h("th", {}, "Seq"), h("th", {}, "Interval"))),
      h("tbody", {}, app.instances.map((i) => h("tr", {},
        h("td", {}, i.instance_id),
        h("td", {}, i.liveness_alert ? badge(i.liveness_alert === "INSTANCE_DOWN" ? "DOWN" : "LATE", "status") : badge(i.last_status, "beat")),
        h("td", {}, ago(i.last_beat)),
        h("td", { class: "num" }, i.last_seq),
        h("td", { class: "num" }, `${i.interval_ms / 1000} s`))))));
    alertList.replaceChildren(h("h3", {}, `Open alerts (${app.alerts.length})`),
      ...(app.alerts.length ? app.alerts.map(alertCard) : [h("p", { class: "quiet" }, "None.")]));
  }

  drawRanges();
  for (const name of CHARTS) charts.append(h("div", { class: "chart-box", dataset: { chart: name } }));
  view.replaceChildren(head, alertList, h("div", { class: "charts-head" }, h("h3", {}, "Charts"), ranges), charts, instances);
  load();
  loadCharts();
  return { appId, refresh() { load(); loadCharts(); } };
}

function alertCard(alert) {
  alertsById.set(alert.alert_id, alert);
  const evidence = Object.entries(alert.evidence || {});
  return h("article", { class: `alert sev-${alert.severity.toLowerCase()}`, dataset: { alertId: alert.alert_id } },
    h("header", {}, badge(alert.severity, "sev"), " ", h("b", {}, alert.kind), alert.instance_id ? ` on ${alert.instance_id}` : "",
      h("span", { class: "quiet" }, ` since ${ago(alert.started_at)}`), " ", ackCell(alert)),
    h("p", { class: "summary" }, alert.summary),
    evidence.length ? h("details", { open: true }, h("summary", {}, "Evidence"),
      h("dl", { class: "evidence" }, evidence.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))) : null,
    alert.recommendations.length ? h("div", { class: "recommendations" }, h("b", {}, "Recommended"),
      h("ul", {}, alert.recommendations.map((r) => h("li", {}, r)))) : null,
  );
}

// ---------------------------------------------------------------- alerts and leaks

function alertsView() {
  const filters = { state: "open", severity: "", kind: "", app: "" };
  const rows = h("tbody");
  const control = (name, values) => {
    const el = h("select", { name, "aria-label": name, onchange: () => { filters[name] = el.value; load(); } },
      values.map(([v, label]) => h("option", { value: v }, label)));
    return el;
  };
  const text = (name, placeholder) => {
    const el = h("input", { name, placeholder, "aria-label": name, onchange: () => { filters[name] = el.value.trim(); load(); } });
    return el;
  };

  async function load() {
    const q = new URLSearchParams({ limit: 500, state: filters.state });
    for (const k of ["severity", "kind", "app"]) if (filters[k]) q.set(k, filters[k]);
    let list;
    try {
      list = (await getJson(`/api/v1/alerts?${q}`)).alerts;
    } catch (e) {
      rows.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "error" }, e.message)));
      return;
    }
    list.sort((a, b) => (a.state === b.state ? 0 : a.state === "FIRING" ? -1 : 1));
    rows.replaceChildren(...list.map((a) => {
      alertsById.set(a.alert_id, a);
      return h("tr", { dataset: { alertId: a.alert_id } },
        h("td", {}, badge(a.severity, "sev")),
        h("td", {}, a.state),
        h("td", {}, a.kind),
        h("td", {}, appLink(a.app_id), a.instance_id ? ` / ${a.instance_id}` : ""),
        h("td", { class: "summary" }, a.summary),
        h("td", {}, ago(a.event_at)),
        h("td", {}, ackCell(a)));
    }));
  }

  view.replaceChildren(
    h("h2", {}, "Alerts"),
    h("section", { class: "controls" },
      control("state", [["open", "open"], ["all", "all (open first)"], ["resolved", "resolved"]]),
      control("severity", [["", "any severity"], ["CRITICAL", "critical"], ["WARNING", "warning"]]),
      text("kind", "kind, e.g. MEMORY_HIGH"), text("app", "application id")),
    h("table", { class: "alerts", id: "alerts" },
      h("thead", {}, h("tr", {}, ["Severity", "State", "Kind", "Application", "Summary", "Last change", "Acknowledgement"].map((t) => h("th", {}, t)))),
      rows),
  );
  load();
  return { refresh: load };
}

function leaksView() {
  const rows = h("tbody");
  async function load() {
    const { leaks } = await getJson("/api/v1/leaks?limit=500");
    rows.replaceChildren(...leaks.map((a) => h("tr", {},
      h("td", {}, appLink(a.app_id), a.instance_id ? ` / ${a.instance_id}` : ""),
      h("td", {}, a.kind.replace("_SUSPECTED", "")),
      h("td", {}, badge(a.severity, "sev")),
      h("td", {}, until(a.evidence.projected_exhaustion)),
      h("td", {}, a.evidence.projected_exhaustion || "no limit known"),
      h("td", { class: "summary" }, a.summary))));
  }
  view.replaceChildren(h("h2", {}, "Leak suspects, by time to exhaustion"),
    h("table", { class: "leaks", id: "leaks" },
      h("thead", {}, h("tr", {}, ["Application", "Resource", "Severity", "Runs out", "Projected exhaustion", "Summary"].map((t) => h("th", {}, t)))),
      rows));
  load().catch((e) => rows.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "error" }, e.message))));
  return { refresh: load };
}

// ---------------------------------------------------------------- routing and live events

function route() {
  const hash = location.hash || "#/";
  const [, page, arg] = hash.match(/^#\/([^/]*)\/?(.*)$/) || [];
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("on", a.dataset.nav === (page || "fleet"));
  if (page === "app" && arg) current = appView(decodeURIComponent(arg));
  else if (page === "alerts") current = alertsView();
  else if (page === "leaks") current = leaksView();
  else current = fleetView();
}

function follow() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/v1/events");
  events.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  events.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  events.addEventListener("alert", (e) => {
    const a = JSON.parse(e.data);
    feed(`${a.state === "FIRING" ? "▲" : "▼"} ${a.kind} ${a.state.toLowerCase()} on ${a.app_id}`, a.state === "FIRING" ? "firing" : "resolved");
    scheduleRefresh();
  });
  events.addEventListener("ack", (e) => {
    const k = JSON.parse(e.data);
    acks.set(k.alert_id, k);
    updateAckCells(k.alert_id);
    feed(`${k.action === "ACK" ? "✓ acknowledged" : "↺ withdrawn"} by ${k.by}: ${k.app_id}`, "ack");
  });
  events.addEventListener("resync", scheduleRefresh);
}

window.addEventListener("hashchange", route);
route();
follow();
