// JIRIAF dashboard: polls the central service's summary every 2 s and renders it with plain DOM.
// The API token lives in sessionStorage only; it is sent in the Authorization header, never in a URL.
"use strict";

(function () {
  const POLL_MS = 2000;
  const TOKEN_KEY = "jiriaf.dashboard.token";
  const API = new URL("../api/v1/", document.baseURI);

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    timer: null,
    inflight: false,
    lastJson: {},          // section -> JSON of what was rendered, to skip unchanged sections
    nodeExpiry: new Map(), // node name -> client ms when its walltime ends (only ever moves earlier)
    pilotExpiry: new Map(),
    clockOffset: 0,        // server ms - client ms
  };

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    let s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const pad = (n) => String(n).padStart(2, "0");
    return (d ? d + "d " : "") + pad(h) + ":" + pad(m) + ":" + pad(s);
  }

  function fmtAgo(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60 ? (s % 60) + "s " : "") + "ago";
    return Math.floor(s / 3600) + "h " + (Math.floor(s / 60) % 60) + "m ago";
  }

  function stateText(w) {
    return w.outcome && w.outcome !== w.state ? w.state + " (" + w.outcome + ")" : w.state;
  }

  function fmtNumber(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    const a = Math.abs(v);
    if (a === 0 || Number.isInteger(v) && a < 1e5) return String(v);
    if (a >= 1e5 || a < 1e-4) return v.toExponential(1);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    return String(Number(v.toPrecision(2)));
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const t = new Date(iso);
    return isNaN(t) ? "—" : t.toLocaleTimeString();
  }

  function fmtMemory(mb) {
    return mb >= 1024 ? (mb / 1024).toFixed(mb % 1024 ? 1 : 0) + " GiB" : mb + " MiB";
  }

  function badge(text, kind) {
    return el("span", { class: "badge badge-" + (kind || String(text).toLowerCase()), text: text });
  }

  function showBanner(message) {
    $("banner-text").textContent = message;
    $("banner").hidden = false;
  }

  function clearBanner() {
    $("banner").hidden = true;
    $("banner-text").textContent = "";
  }

  function fillTable(tbodyId, emptyId, rows) {
    const body = $(tbodyId);
    body.replaceChildren(...rows);
    $(emptyId).hidden = rows.length > 0;
    body.closest("table").hidden = rows.length === 0;
  }

  function changed(section, value) {
    const json = JSON.stringify(value);
    if (state.lastJson[section] === json) return false;
    state.lastJson[section] = json;
    return true;
  }

  // ------------------------------------------------------------------ API

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(new URL(path, API), {
        method, headers, cache: "no-store", credentials: "omit",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new HttpError(0, "cannot reach the central service");
    }
    let data = null;
    const text = await resp.text();
    if (text) {
      try { data = JSON.parse(text); } catch (err) { data = null; }
    }
    if (!resp.ok) {
      throw new HttpError(resp.status, describeError(resp.status, data));
    }
    return data;
  }

  function describeError(status, data) {
    const detail = data && data.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail.map((d) => (d.loc ? d.loc.slice(1).join(".") + ": " : "") + (d.msg || "")).join("; ");
    }
    if (data && typeof data.message === "string") return data.message;
    return "HTTP " + status;
  }

  // ------------------------------------------------------------------ session

  function signedIn(on) {
    $("login-view").hidden = on;
    $("app-view").hidden = !on;
    $("session").hidden = !on;
  }

  function signOut(message) {
    stopPolling();
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    state.lastJson = {};
    state.nodeExpiry.clear();
    state.pilotExpiry.clear();
    $("workflows").replaceChildren();
    clearBanner();
    signedIn(false);
    $("login-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  async function signIn(token) {
    state.token = token;
    $("login-button").disabled = true;
    $("login-error").textContent = "";
    try {
      const summary = await api("GET", "dashboard/summary");
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      signedIn(true);
      render(summary);
      startPolling();
    } catch (err) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      $("login-error").textContent =
        err.status === 401 || err.status === 403 ? "That token was not accepted." : err.message;
    } finally {
      $("login-button").disabled = false;
    }
  }

  // ------------------------------------------------------------------ polling

  function startPolling() {
    stopPolling();
    state.timer = setTimeout(poll, POLL_MS);
  }

  function stopPolling() {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  }

  async function poll() {
    state.timer = null;
    if (!state.token) return;
    if (!document.hidden && !state.inflight) {
      state.inflight = true;
      try {
        render(await api("GET", "dashboard/summary"));
        if ($("banner").dataset.source === "poll") clearBanner();
      } catch (err) {
        if (err.status === 401) {
          signOut("The token is no longer accepted; sign in again.");
          return;
        }
        showBanner("Could not refresh: " + err.message);
        $("banner").dataset.source = "poll";
      } finally {
        state.inflight = false;
      }
    }
    if (state.token) state.timer = setTimeout(poll, POLL_MS);
  }

  // ------------------------------------------------------------------ rendering

  function render(s) {
    state.clockOffset = Date.parse(s.generated_at) - Date.now();
    $("who").textContent = s.user + (s.admin ? " (admin)" : "");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    const kube = $("kube-error");
    kube.hidden = !s.kubernetes_error;
    kube.textContent = s.kubernetes_error ? "Kubernetes: " + s.kubernetes_error : "";

    renderNodes(s.nodes);
    renderPilots(s.pilots);
    if (changed("sites", s.sites)) renderSites(s.sites);
    if (changed("requests", s.workflows.map(requestRow))) renderRequests(s.workflows);
    renderWorkflows(s.workflows);
    if (changed("events", s.events)) renderEvents(s.events);
    tick();
  }

  function serverNow() {
    return Date.now() + state.clockOffset;
  }

  function renderNodes(nodes) {
    const now = Date.now();
    const seen = new Set();
    for (const n of nodes) {
      seen.add(n.name);
      if (n.alivetime_s === null) {
        state.nodeExpiry.delete(n.name);
        continue;
      }
      const end = now + n.alivetime_s * 1000;
      const prev = state.nodeExpiry.get(n.name);
      // the label is refreshed now and then: never let the countdown jump back up
      state.nodeExpiry.set(n.name, prev === undefined ? end : Math.min(prev, end));
    }
    for (const name of [...state.nodeExpiry.keys()]) if (!seen.has(name)) state.nodeExpiry.delete(name);
    if (!changed("nodes", nodes.map((n) => ({ ...n, alivetime_s: n.alivetime_s === null })))) return;
    fillTable("nodes", "nodes-empty", nodes.map((n) => el("tr", { "data-node": n.name },
      el("th", { scope: "row", class: "mono", text: n.name }),
      el("td", { text: n.site || "—" }),
      el("td", { text: n.nodetype || "—" }),
      el("td", {}, n.ready ? badge("Ready", "ok") : badge(n.ready_reason || "NotReady", "bad"),
        n.draining ? badge("draining", "warn") : null),
      el("td", { class: "num", text: String(n.pods) }),
      el("td", { class: "num mono countdown", "data-node-expiry": n.name,
        text: n.alivetime_s === null ? "no limit" : "" }),
    )));
  }

  function renderPilots(pilots) {
    state.pilotExpiry.clear();
    for (const p of pilots) {
      if (p.expires_at) state.pilotExpiry.set(p.id, Date.parse(p.expires_at));
    }
    if (!changed("pilots", pilots.map((p) => ({ ...p, remaining_s: null })))) return;
    fillTable("pilots", "pilots-empty", pilots.map((p) => el("tr", {},
      el("th", { scope: "row", class: "mono", text: p.id, title: p.native_id ? "batch job " + p.native_id : null }),
      el("td", { text: p.site + (p.partition ? "/" + p.partition : "") }),
      el("td", {}, badge(p.state, stateKind(p.state)),
        p.last_error ? el("span", { class: "error small", text: " " + p.last_error }) : null),
      el("td", { class: "num", text: String(p.nodes) }),
      el("td", { text: p.leased_to === null ? "idle" : "#" + p.leased_to }),
      // a running pilot counts down to expires_at; a queued one still has its whole walltime
      el("td", { class: "num mono countdown", "data-pilot-expiry": p.expires_at ? p.id : null,
        text: p.expires_at ? "" : fmtDuration(p.remaining_s) }),
    )));
  }

  function stateKind(s) {
    if (["running", "ok", "completed", "active"].includes(s)) return "ok";
    if (["failed", "unreachable", "cancelled"].includes(s)) return "bad";
    if (["stopping", "stopped"].includes(s)) return "muted";
    return "warn";
  }

  function renderSites(sites) {
    const rows = [];
    for (const site of sites) {
      const stateCell = () => el("td", {}, badge(site.state, stateKind(site.state)),
        site.enabled ? null : badge("disabled", "muted"),
        site.last_error ? el("span", { class: "error small", text: " " + site.last_error }) : null);
      if (!site.resources.length) {
        rows.push(el("tr", {}, el("th", { scope: "row", text: site.name }),
          el("td", { colspan: 6, class: "muted", text: "nothing scraped yet (" + site.kind + ")" }),
          stateCell()));
        continue;
      }
      site.resources.forEach((r, i) => rows.push(el("tr", {},
        el("th", { scope: "row", text: i === 0 ? site.name : "" }),
        el("td", { text: r.partition }),
        el("td", { text: r.node_type }),
        el("td", { class: "num", text: r.nodes_free + " / " + r.nodes_total }),
        el("td", { class: "num", text: String(r.cpus_per_node) }),
        el("td", { class: "num", text: fmtMemory(r.memory_mb_per_node) }),
        el("td", { class: "num", text: r.max_walltime_s === null ? "no limit" : fmtDuration(r.max_walltime_s) }),
        i === 0 ? stateCell() : el("td"),
      )));
    }
    fillTable("sites", "sites-empty", rows);
  }

  function requestRow(w) {
    return [w.id, w.name, w.user, w.state, w.outcome, w.nodes, w.walltime_s, w.reason];
  }

  function renderRequests(workflows) {
    fillTable("requests", "requests-empty", workflows.map((w) => el("tr", {},
      el("td", { class: "num", text: String(w.id) }),
      el("th", { scope: "row", text: w.name }),
      el("td", { text: w.user }),
      el("td", {}, badge(stateText(w), stateKind(w.state))),
      el("td", { class: "num", text: w.nodes + " × " + w.node_type }),
      el("td", { class: "num", text: fmtDuration(w.walltime_s) }),
      el("td", { class: "reason", text: w.reason || "" }),
    )));
  }

  function renderEvents(events) {
    const items = events.map((e) => el("li", {},
      el("time", { datetime: e.at, text: fmtTime(e.at) }), " ",
      el("span", { class: "mono", text: e.action }), " ",
      el("span", { class: "muted", text: e.actor + " → " + e.subject_kind + " " + e.subject_id }), " ",
      e.message));
    $("events").replaceChildren(...items);
    $("events-empty").hidden = items.length > 0;
  }

  // ---- workflows: one card each, kept across polls so the scale inputs survive re-rendering

  function renderWorkflows(workflows) {
    const box = $("workflows");
    const ids = new Set(workflows.map((w) => String(w.id)));
    for (const card of [...box.children]) if (!ids.has(card.dataset.workflow)) card.remove();
    $("workflows-empty").hidden = workflows.length > 0;
    workflows.forEach((w, index) => {
      let card = box.querySelector('[data-workflow="' + w.id + '"]');
      if (!card) card = makeWorkflowCard(w);
      if (box.children[index] !== card) box.insertBefore(card, box.children[index] || null);
      updateWorkflowCard(card, w);
    });
  }

  function makeWorkflowCard(w) {
    const titleId = "wf-" + w.id + "-title";
    return el("article", { class: "workflow", "data-workflow": String(w.id), "aria-labelledby": titleId },
      el("header", { class: "wf-head" },
        el("h3", { id: titleId }),
        el("span", { class: "wf-state" })),
      el("p", { class: "wf-reason muted" }),
      el("p", { class: "wf-status" }),
      el("div", { class: "wf-body" },
        el("div", { class: "wf-deployments" }),
        el("div", { class: "wf-twin" })),
      el("div", { class: "wf-charts" }));
  }

  function updateWorkflowCard(card, w) {
    const part = (cls) => card.querySelector("." + cls);
    const head = JSON.stringify([w.name, w.user, w.namespace, w.state, w.outcome, w.reason, w.status]);
    if (card.dataset.head !== head) {
      card.dataset.head = head;
      part("wf-head").querySelector("h3").replaceChildren(
        w.name, el("span", { class: "muted", text: " #" + w.id + " · " + w.user + " · ns " + w.namespace }));
      part("wf-state").replaceChildren(badge(stateText(w), stateKind(w.state)));
      part("wf-reason").textContent = w.reason || "";
      const st = w.status;
      part("wf-status").textContent = st
        ? "Pods: " + st.pods_running + " running, " + st.pods_pending + " pending, " + st.pods_succeeded +
          " succeeded, " + st.pods_failed + " failed; " + st.restarts + " restarts (" + st.phase + ", " +
          fmtTime(st.at) + ")" + (st.message ? " — " + st.message : "")
        : "No status sample yet.";
    }
    updateDeployments(part("wf-deployments"), w);
    const twinJson = JSON.stringify(w.twin);
    if (part("wf-twin").dataset.json !== twinJson) {
      part("wf-twin").dataset.json = twinJson;
      renderTwin(part("wf-twin"), w);
    }
    const seriesJson = JSON.stringify(w.series);
    if (part("wf-charts").dataset.json !== seriesJson) {
      part("wf-charts").dataset.json = seriesJson;
      renderCharts(part("wf-charts"), w);
    }
  }

  function updateDeployments(box, w) {
    if (!box.querySelector("table")) {
      box.append(el("h4", { text: "Deployments" }),
        el("table", { class: "deployments" },
          el("thead", {}, el("tr", {},
            el("th", { scope: "col", text: "Deployment" }),
            el("th", { scope: "col", class: "num", text: "Replicas" }),
            el("th", { scope: "col", class: "num", text: "Ready" }),
            el("th", { scope: "col", text: "Scale" }))),
          el("tbody")),
        el("p", { class: "muted none", text: "This workflow has no Deployments." }));
    }
    const body = box.querySelector("tbody");
    const keys = new Set(w.deployments.map((d) => d.namespace + "/" + d.name));
    for (const row of [...body.children]) if (!keys.has(row.dataset.deployment)) row.remove();
    w.deployments.forEach((d, index) => {
      const key = d.namespace + "/" + d.name;
      let row = [...body.children].find((r) => r.dataset.deployment === key);
      if (!row) row = makeDeploymentRow(w, d);
      if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
      row.querySelector(".replicas").textContent = String(d.replicas);
      row.querySelector(".ready").textContent = d.ready_replicas + " / " + d.replicas;
      const input = row.querySelector("input");
      if (!input.dataset.dirty && document.activeElement !== input) input.value = String(d.replicas);
    });
    box.querySelector("table").hidden = w.deployments.length === 0;
    box.querySelector(".none").hidden = w.deployments.length > 0;
  }

  function makeDeploymentRow(w, d) {
    const inputId = "scale-" + w.id + "-" + d.name;
    const input = el("input", { id: inputId, type: "number", min: "0", step: "1",
      inputmode: "numeric", value: String(d.replicas), class: "replicas-input" });
    input.addEventListener("input", () => { input.dataset.dirty = "1"; });
    const button = el("button", { type: "submit", text: "Scale" });
    const form = el("form", { class: "scale-form", "data-action": "scale" },
      el("label", { for: inputId, class: "visually-hidden", text: "Replicas for " + d.name }),
      input, button);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      scale(w.id, d, input, button);
    });
    return el("tr", { "data-deployment": d.namespace + "/" + d.name },
      el("th", { scope: "row", class: "mono", text: d.name }),
      el("td", { class: "num replicas" }),
      el("td", { class: "num ready" }),
      el("td", {}, form));
  }

  async function scale(workflowId, d, input, button) {
    const replicas = Number(input.value);
    if (input.value.trim() === "" || !Number.isInteger(replicas) || replicas < 0) {
      showBanner("Replicas must be a whole number, 0 or more.");
      $("banner").dataset.source = "action";
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      await api("POST", "workflows/" + encodeURIComponent(workflowId) + "/actions", {
        action: "scale", replicas: replicas, deployment: d.name, source: "dashboard",
        reason: "scaled from the dashboard",
      });
      delete input.dataset.dirty;
      clearBanner();
      if (!state.inflight) { stopPolling(); poll(); }
    } catch (err) {
      if (err.status === 401) { signOut("The token is no longer accepted; sign in again."); return; }
      showBanner("Scaling " + d.name + " failed: " + err.message);
      $("banner").dataset.source = "action";
    } finally {
      button.disabled = false;
    }
  }

  function renderTwin(box, w) {
    const t = w.twin;
    if (!t) { box.replaceChildren(); return; }
    const dec = t.decision;
    const rows = dec.state_labels.map((label, i) => {
      const p = dec.probabilities[i];
      const bar = el("span", { class: "bar" + (label === t.likely_state ? " bar-top" : "") });
      bar.style.width = Math.round(p * 100) + "%";
      return el("tr", {},
        el("th", { scope: "row", text: label }),
        el("td", { class: "bar-cell" }, el("span", { class: "bar-track" }, bar)),
        el("td", { class: "num", text: (p * 100).toFixed(1) + "%" }));
    });
    box.replaceChildren(
      el("h4", { text: "Digital twin" }),
      el("p", {}, "Step " + dec.step + " at " + fmtTime(t.at) + ": most likely ",
        el("strong", { text: t.likely_state }),
        dec.lq === null ? "" : " (queue " + fmtNumber(dec.lq) + ")", "."),
      el("table", { class: "twin" },
        el("caption", { class: "visually-hidden", text: "Estimated state probabilities" }),
        el("tbody", {}, ...rows)),
      el("p", {}, "Recommends ", el("strong", { text: dec.recommended_threads + " threads" }),
        " (running " + dec.threads + "): ",
        dec.applied ? badge("applied", "ok") : badge("not applied", "muted"),
        dec.detail ? el("span", { class: "muted small", text: " " + dec.detail }) : null));
  }

  // ---- charts: one small canvas per series, drawn by hand

  function renderCharts(box, w) {
    box.replaceChildren(...w.series.map((s) => {
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const unit = s.unit ? " " + s.unit : "";
      const values = s.points.map((p) => p[1]);
      const canvas = el("canvas", { width: 280, height: 90, role: "img",
        "aria-label": s.name + ": latest " + fmtNumber(last) + unit + ", min " +
          fmtNumber(Math.min(...values)) + ", max " + fmtNumber(Math.max(...values)) });
      const fig = el("figure", { class: "chart", "data-series": s.name, "data-points": String(s.points.length) },
        el("figcaption", {}, s.name, el("span", { class: "muted", text: " " + fmtNumber(last) + unit })),
        canvas);
      drawLine(canvas, s.points);
      return fig;
    }));
  }

  function drawLine(canvas, points) {
    const ratio = window.devicePixelRatio || 1;
    const cssW = canvas.width, cssH = canvas.height;
    canvas.width = cssW * ratio;
    canvas.height = cssH * ratio;
    canvas.style.width = cssW + "px";
    canvas.style.height = cssH + "px";
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.scale(ratio, ratio);
    const styles = getComputedStyle(document.documentElement);
    const line = styles.getPropertyValue("--accent").trim() || "#2458a6";
    const grid = styles.getPropertyValue("--grid").trim() || "#d9dee6";
    const text = styles.getPropertyValue("--muted").trim() || "#5b6675";
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    let lo = Math.min(0, ...ys), hi = Math.max(...ys);
    if (hi === lo) hi = lo + 1;
    const ticks = [lo, (lo + hi) / 2, hi];
    ctx.font = "10px system-ui, sans-serif";
    const labelWidth = Math.max(...ticks.map((v) => ctx.measureText(fmtNumber(v)).width));
    const pad = { l: Math.ceil(labelWidth) + 8, r: 6, t: 6, b: 14 };
    const w = cssW - pad.l - pad.r, h = cssH - pad.t - pad.b;
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const X = (x) => pad.l + (x1 === x0 ? w : ((x - x0) / (x1 - x0)) * w);
    const Y = (y) => pad.t + h - ((y - lo) / (hi - lo)) * h;
    ctx.fillStyle = text;
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of ticks) {
      ctx.beginPath();
      ctx.moveTo(pad.l, Math.round(Y(v)) + 0.5);
      ctx.lineTo(pad.l + w, Math.round(Y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(fmtNumber(v), pad.l - 4, Y(v));
    }
    if (x1 > x0) {
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.fillText(fmtAgo(x1 - x0), pad.l, pad.t + h + 2);
      ctx.textAlign = "right";
      ctx.fillText("latest", pad.l + w, pad.t + h + 2);
    }
    ctx.strokeStyle = line;
    ctx.fillStyle = line;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
    ctx.stroke();
    const lastPoint = points[points.length - 1];
    ctx.beginPath();
    ctx.arc(X(lastPoint[0]), Y(lastPoint[1]), 2.5, 0, 2 * Math.PI);
    ctx.fill();
  }

  // ------------------------------------------------------------------ countdowns, once a second

  function tick() {
    const now = Date.now();
    for (const cell of document.querySelectorAll("[data-node-expiry]")) {
      const end = state.nodeExpiry.get(cell.dataset.nodeExpiry);
      if (end !== undefined) setCountdown(cell, (end - now) / 1000);
    }
    for (const cell of document.querySelectorAll("[data-pilot-expiry]")) {
      const end = state.pilotExpiry.get(cell.dataset.pilotExpiry);
      if (end !== undefined) setCountdown(cell, (end - serverNow()) / 1000);
    }
  }

  function setCountdown(cell, seconds) {
    cell.textContent = fmtDuration(seconds);
    cell.classList.toggle("expiring", seconds < 300);
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) { $("login-error").textContent = "Enter a token."; return; }
      signIn(token);
    });
    $("logout").addEventListener("click", () => signOut(""));
    $("banner-close").addEventListener("click", clearBanner);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.token && state.timer === null && !state.inflight) poll();
    });
    setInterval(tick, 1000);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
    else { signedIn(false); $("token").focus(); }
  });
})();
