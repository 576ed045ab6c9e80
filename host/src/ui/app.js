// The Sluice console: a page per view (#/ functions, #/functions/NAME, #/jobs/ID,
// #/correlation/ID, #/topics), all read from the JSON API with the session cookie. Live:
// a function's and a job's page follow Server-Sent Events; the overview and topics refresh
// every two seconds. Every change sends the CSRF token (x-sluice-csrf) read from its cookie.
"use strict";

const main = () => document.getElementById("main");
let cleanups = [];
let session = null;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
const enc = encodeURIComponent;

function csrf() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("sluice_csrf="));
  return found ? decodeURIComponent(found.slice("sluice_csrf=".length)) : "";
}

class SignIn extends Error {}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  const options = { method, headers, credentials: "same-origin" };
  if (method !== "GET") {
    headers["x-sluice-csrf"] = csrf();
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      options.body = JSON.stringify(body);
    }
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    showLogin();
    throw new SignIn("sign in first");
  }
  const text = await response.text();
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((data && data.error && data.error.message) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function toast(message) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 2500);
}

function setLive(on) {
  document.getElementById("live").classList.toggle("on", on);
}

function status(s) {
  return `<span class="status ${esc(s)}" data-status="${esc(s)}">${esc(s)}</span>`;
}

function when(t) {
  if (!t) return "—";
  const d = new Date(t);
  return `<span title="${esc(t)}">${esc(d.toLocaleString())}</span>`;
}

function duration(a, b) {
  if (!a || !b) return "—";
  const ms = new Date(b) - new Date(a);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function spark(perMinute) {
  if (!perMinute || !perMinute.length) return '<span class="muted">—</span>';
  const top = Math.max(1, ...perMinute.map((m) => m.succeeded + m.failed));
  return `<span class="spark" title="jobs ended per minute, oldest first">${perMinute.map((m) => {
    const h = Math.round(((m.succeeded + m.failed) / top) * 22);
    return `<i class="${m.failed > m.succeeded ? "bad" : ""}" style="height:${h}px"></i>`;
  }).join("")}</span>`;
}

function rate(value, suffix = "") {
  return value === null || value === undefined ? "—" : `${value}${suffix}`;
}

function percent(value) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)}%`;
}

// ---- views ------------------------------------------------------------------------------

async function overview(mine) {
  main().innerHTML = `<h1>Functions</h1><div id="functions"><p class="muted">Loading…</p></div>`;
  async function refresh() {
    const list = await api("GET", "/v1/functions");
    const rows = await Promise.all(list.functions.map(async (f) => {
      const s = await api("GET", `/v1/functions/${enc(f.name)}/stats`).catch(() => null);
      return { f, s };
    }));
    const box = document.getElementById("functions");
    if (!box) return;
    if (!rows.length) {
      box.innerHTML = `<p class="muted">No functions yet: <code>sluice deploy</code> one.</p>`;
      return;
    }
    box.innerHTML = `<table><thead><tr><th>Function</th><th>Version</th><th>State</th>
      <th class="num">Queued</th><th class="num">Running</th><th class="num">Done / min</th>
      <th class="num">Error rate</th><th class="num">Dead letters</th><th>Last minutes</th></tr></thead><tbody>
      ${rows.map(({ f, s }) => `<tr data-function="${esc(f.name)}">
        <td><a href="#/functions/${enc(f.name)}">${esc(f.name)}</a></td>
        <td>v${esc(f.version)}</td>
        <td>${f.paused ? status("paused") : '<span class="muted">active</span>'}</td>
        <td class="num">${s ? s.queued + s.delayed : "—"}</td>
        <td class="num">${s ? s.running : "—"}</td>
        <td class="num">${s ? rate(s.recent.succeeded_per_minute) : "—"}</td>
        <td class="num">${s ? percent(s.recent.error_rate) : "—"}</td>
        <td class="num">${s ? s.failed + s.dead : "—"}</td>
        <td>${s ? spark(s.recent.per_minute) : ""}</td></tr>`).join("")}
      </tbody></table>`;
  }
  await refresh();
  poll(refresh, 2000, mine);
}

// Live updates of the view of route `mine`: nothing, if the page moved on while it loaded.
function poll(refresh, ms, mine) {
  if (mine !== generation) return;
  setLive(true);
  const timer = setInterval(() => refresh().catch(report), ms);
  cleanups.push(() => clearInterval(timer));
}

function stream(mine, path, handlers) {
  if (mine !== generation) return null;
  const source = new EventSource(path);
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => handle(JSON.parse(e.data), source));
  }
  cleanups.push(() => source.close());
  return source;
}

async function functionPage(name, mine) {
  const f = await api("GET", `/v1/functions/${enc(name)}`);
  if (mine !== generation) return;
  main().innerHTML = `
    <div class="row"><h1>${esc(name)}</h1><span id="paused"></span>
      <span style="flex:1"></span><button id="toggle-pause" type="button"></button></div>
    <div class="grid" id="figures"></div>
    <h2>Dead letters</h2><div class="row" style="margin-bottom:6px">
      <button id="redrive-all" type="button">Redrive all</button>
      <button id="purge-all" type="button" class="danger">Purge all</button></div>
    <div id="dead-letters"></div>
    <h2>Recent jobs</h2><div id="jobs"></div>
    <h2>Settings</h2><div class="card" id="settings"></div>
    <h2>Versions</h2><div id="versions"></div>`;
  const settings = ["max_concurrency", "timeout_ms", "memory_mb", "max_attempts", "backoff_base_ms",
    "backoff_max_ms", "max_queued", "rate_per_second", "key_concurrency", "key_rate_per_second",
    "concurrency_key", "debounce_ms", "debounce_max_ms", "breaker_failures", "breaker_cooldown_ms", "batch", "then", "allowed_outbound_hosts"];
  document.getElementById("settings").innerHTML = `<dl>
    <dt>version</dt><dd>v${esc(f.version)} (${esc(f.change)}), deployed ${when(f.deployed_at)}</dd>
    <dt>digest</dt><dd class="mono">${esc(f.digest)}</dd>
    ${settings.map((k) => `<dt>${esc(k)}</dt><dd class="mono">${esc(JSON.stringify(f[k]))}</dd>`).join("")}
    <dt>subscriptions</dt><dd class="mono">${esc(JSON.stringify(f.subscriptions))}</dd></dl>`;

  let paused = f.paused;
  const pauseButton = document.getElementById("toggle-pause");
  function showPaused() {
    document.getElementById("paused").innerHTML = paused ? status("paused") : "";
    pauseButton.textContent = paused ? "Resume" : "Pause";
  }
  showPaused();
  pauseButton.onclick = act(pauseButton, async () => {
    await api("POST", `/v1/functions/${enc(name)}/${paused ? "resume" : "pause"}`);
    paused = !paused;
    showPaused();
    toast(paused ? `${name} paused` : `${name} resumed`);
  });

  async function deadLetters() {
    const page = await api("GET", `/v1/functions/${enc(name)}/dead-letters?limit=50`);
    const box = document.getElementById("dead-letters");
    if (!box) return;
    box.innerHTML = page.dead_letters.length ? `<table><thead><tr><th>Job</th><th>Status</th><th>Error</th>
        <th>Finished</th><th></th></tr></thead><tbody>
      ${page.dead_letters.map((j) => `<tr data-dead-letter="${esc(j.id)}">
        <td><a class="mono" href="#/jobs/${enc(j.id)}">${esc(j.id)}</a></td><td>${status(j.status)}</td>
        <td>${esc((j.error || "").slice(0, 160))}</td><td>${when(j.finished_at)}</td>
        <td class="row"><button type="button" data-redrive="${esc(j.id)}">Redrive</button>
          <button type="button" class="danger" data-purge="${esc(j.id)}">Purge</button></td></tr>`).join("")}
      </tbody></table>` : `<p class="muted">None.</p>`;
    box.querySelectorAll("[data-redrive]").forEach((b) => {
      b.onclick = act(b, async () => {
        await api("POST", `/v1/functions/${enc(name)}/dead-letters/redrive`, { ids: [b.dataset.redrive] });
        toast("Redriven: it runs again");
        await Promise.all([deadLetters(), jobs()]);
      });
    });
    box.querySelectorAll("[data-purge]").forEach((b) => {
      b.onclick = act(b, async () => {
        if (!confirm("Delete this job for good?")) return;
        await api("POST", `/v1/functions/${enc(name)}/dead-letters/purge`, { ids: [b.dataset.purge] });
        toast("Purged");
        await deadLetters();
      });
    });
  }
  const redriveAll = document.getElementById("redrive-all");
  redriveAll.onclick = act(redriveAll, async () => {
    const r = await api("POST", `/v1/functions/${enc(name)}/dead-letters/redrive`, { all: true });
    toast(`Redriven: ${r.redriven.length}`);
    await Promise.all([deadLetters(), jobs()]);
  });
  const purgeAll = document.getElementById("purge-all");
  purgeAll.onclick = act(purgeAll, async () => {
    if (!confirm("Delete every dead letter of this function for good?")) return;
    const r = await api("POST", `/v1/functions/${enc(name)}/dead-letters/purge`, { all: true });
    toast(`Purged: ${r.purged.length}`);
    await deadLetters();
  });

  async function jobs() {
    const page = await api("GET", `/v1/jobs?function=${enc(name)}&limit=20`);
    const box = document.getElementById("jobs");
    if (!box) return;
    box.innerHTML = jobTable(page.jobs);
  }

  async function versions() {
    const v = await api("GET", `/v1/functions/${enc(name)}/versions`);
    document.getElementById("versions").innerHTML = `<table><thead><tr><th>Version</th><th>Change</th>
      <th>Digest</th><th>Created</th><th></th></tr></thead><tbody>
      ${v.versions.slice().reverse().map((x) => `<tr><td>v${esc(x.version)}${x.current ? " (current)" : ""}</td>
        <td>${esc(x.change)}</td><td class="mono">${esc(String(x.digest).slice(0, 19))}…</td><td>${when(x.created_at)}</td>
        <td>${x.version < v.current ? `<button type="button" data-rollback="${esc(x.version)}">Roll back to v${esc(x.version)}</button>` : ""}</td></tr>`).join("")}
      </tbody></table>`;
    document.querySelectorAll("[data-rollback]").forEach((b) => {
      b.onclick = act(b, async () => {
        if (!confirm(`Make v${b.dataset.rollback} current again?`)) return;
        const r = await api("POST", `/v1/functions/${enc(name)}/rollback?to=${enc(b.dataset.rollback)}`);
        toast(`Now v${r.version}`);
        await versions();
      });
    });
  }

  let last = null;
  stream(mine, `/v1/functions/${enc(name)}/events`, {
    stats: (s) => {
      document.getElementById("figures").innerHTML = [
        ["queued", s.queued], ["delayed", s.delayed], ["running", s.running], ["succeeded", s.succeeded],
        ["failed", s.failed], ["dead", s.dead], ["done / min", rate(s.recent.succeeded_per_minute)],
        ["error rate", percent(s.recent.error_rate)],
      ].map(([k, v]) => `<div class="figure" data-figure="${esc(k)}"><b>${esc(v)}</b><span>${esc(k)}</span></div>`).join("")
        + `<div class="figure"><b>${spark(s.recent.per_minute)}</b><span>last minutes</span></div>`;
      if (s.paused !== paused) { paused = s.paused; showPaused(); }
      const key = JSON.stringify([s.queued, s.delayed, s.running, s.succeeded, s.failed, s.dead, s.cancelled, s.superseded]);
      if (key !== last) {
        last = key;
        deadLetters().catch(report);
        jobs().catch(report);
      }
    },
    end: (_, source) => { source.close(); toast(`${name} was deleted`); location.hash = "#/"; },
  });
  await versions();
}

function jobTable(jobs) {
  if (!jobs.length) return `<p class="muted">None.</p>`;
  return `<table><thead><tr><th>Job</th><th>Function</th><th>Status</th><th class="num">Attempts</th>
    <th>Created</th><th>Took</th></tr></thead><tbody>
    ${jobs.map((j) => `<tr data-job="${esc(j.id)}"><td><a class="mono" href="#/jobs/${enc(j.id)}">${esc(j.id)}</a></td>
      <td><a href="#/functions/${enc(j.function)}">${esc(j.function)}</a></td><td>${status(j.status)}</td>
      <td class="num">${esc(j.attempts)}</td><td>${when(j.created_at)}</td><td>${duration(j.started_at, j.finished_at)}</td></tr>`).join("")}
    </tbody></table>`;
}

async function jobPage(id, mine) {
  main().innerHTML = `<div id="job"><p class="muted">Loading…</p></div>`;
  let shown = null;
  async function render() {
    const j = await api("GET", `/v1/jobs/${enc(id)}`);
    const box = document.getElementById("job");
    if (!box) return;
    let output = "";
    if (j.status === "succeeded") {
      if (j.output !== null && j.output !== undefined) {
        output = `<pre id="output">${esc(j.output)}</pre>`;
      } else {
        output = `<p>${esc(j.output_size)} bytes of ${esc(j.output_content_type || "output")}: <a href="${esc(j.output_url)}" target="_blank" rel="noopener">download</a></p>`;
      }
    }
    // What this render shows: the live stream re-renders when it moves on from here.
    shown = `${j.status}/${j.attempts}`;
    const attempts = (j.attempt_history || []).slice().reverse();
    box.innerHTML = `
      <div class="row"><h1 class="mono">${esc(j.id)}</h1><span id="job-status">${status(j.status)}</span>
        <span style="flex:1"></span>
        ${["queued", "delayed"].includes(j.status) ? '<button id="cancel" type="button" class="danger">Cancel</button>' : ""}</div>
      <div class="card"><dl>
        <dt>function</dt><dd><a href="#/functions/${enc(j.function)}">${esc(j.function)}</a>${j.version ? ` v${esc(j.version)}` : ""}</dd>
        <dt>attempts</dt><dd>${esc(j.attempts)}</dd>
        <dt>created</dt><dd>${when(j.created_at)}</dd>
        <dt>started</dt><dd>${when(j.started_at)}</dd>
        <dt>finished</dt><dd>${when(j.finished_at)} (${duration(j.started_at, j.finished_at)})</dd>
        <dt>correlation id</dt><dd><a class="mono" href="#/correlation/${enc(j.correlation_id)}">${esc(j.correlation_id)}</a></dd>
        ${j.superseded_by ? `<dt>superseded by</dt><dd><a class="mono" href="#/jobs/${enc(j.superseded_by)}">${esc(j.superseded_by)}</a></dd>` : ""}
        ${j.concurrency_key ? `<dt>concurrency key</dt><dd class="mono">${esc(j.concurrency_key)}</dd>` : ""}
        <dt>parent</dt><dd>${j.parent ? `${esc(j.parent.kind)} <a class="mono" href="#/${j.parent.kind === "job" ? "jobs" : "correlation"}/${enc(j.parent.kind === "job" ? j.parent.id : j.correlation_id)}">${esc(j.parent.id)}</a>` : "a request"}</dd>
        ${j.event ? `<dt>event</dt><dd>${esc(j.event.type)} on ${esc(j.event.topic)} (${esc(j.event.id)})</dd>` : ""}
        ${j.not_before ? `<dt>not before</dt><dd>${when(j.not_before)}</dd>` : ""}
        ${j.error ? `<dt>error</dt><dd class="error" id="job-error">${esc(j.error)}</dd>` : ""}
        ${j.callback ? `<dt>callback</dt><dd>${esc(j.callback.url)}: ${esc(j.callback.state)} (${esc(j.callback.attempts)} attempts)</dd>` : ""}
      </dl></div>
      <h2>Input</h2>${j.input_preview !== null && j.input_preview !== undefined
        ? `<pre id="input">${esc(j.input_preview)}</pre>${j.input_size > j.input_preview.length ? `<p class="muted">first 2 KiB of ${esc(j.input_size)} bytes</p>` : ""}`
        : `<p class="muted">${esc(j.input_size)} bytes (a claim check)</p>`}
      ${output ? `<h2>Output</h2>${output}` : ""}
      <h2>Attempts</h2>${attempts.length ? attempts.map((a) => `<div class="card" data-attempt="${esc(a.attempt)}">
        <div class="row"><b>Attempt ${esc(a.attempt)}</b><span class="muted">v${esc(a.version)} · ${when(a.started_at)} · ${duration(a.started_at, a.finished_at)}</span>
          ${a.error ? `<span class="error">${esc(a.error)}</span>` : '<span class="status succeeded">ok</span>'}
          ${a.retry_at ? `<span class="muted">retry after ${when(a.retry_at)}</span>` : ""}</div>
        ${a.log ? `<pre>${esc(a.log)}</pre>` : ""}
        ${a.outbound && a.outbound.length ? `<table><thead><tr><th>Outbound call</th><th>Status</th><th class="num">Took</th></tr></thead><tbody>
          ${a.outbound.map((c) => `<tr><td class="mono">${esc(c.method)} ${esc(c.origin)}${esc(c.path)}</td><td>${esc(c.status ?? c.error)}</td><td class="num">${esc(c.duration_ms)} ms</td></tr>`).join("")}</tbody></table>` : ""}
      </div>`).join("") : `<p class="muted">Not run yet.</p>`}
      <h2>Correlated</h2><div id="correlated"></div>`;
    const cancel = document.getElementById("cancel");
    if (cancel) {
      cancel.onclick = act(cancel, async () => {
        await api("DELETE", `/v1/jobs/${enc(id)}`);
        toast("Cancelled");
      });
    }
    correlationTree(j.correlation_id, document.getElementById("correlated"), id).catch(report);
  }
  await render();
  stream(mine, `/v1/jobs/${enc(id)}/events`, {
    status: (j, source) => {
      if (`${j.status}/${j.attempts}` !== shown) render().catch(report);
      if (["succeeded", "failed", "dead", "cancelled", "superseded"].includes(j.status)) {
        source.close();
        setLive(false);
      }
    },
  });
}

// Every job and event of a correlation id as a tree: each under what caused it.
async function correlationTree(correlationId, box, current) {
  const found = await api("GET", `/v1/jobs?correlation_id=${enc(correlationId)}`);
  const nodes = [
    ...found.events.map((e) => ({ id: e.id, kind: "event", parent: e.parent, label: `event ${esc(e.type || "")} on ${esc(e.topic || "")}` })),
    ...found.jobs.map((j) => ({ id: j.id, kind: "job", parent: j.parent, label: `${esc(j.function)} ${status(j.status)}` })),
  ];
  const ids = new Set(nodes.map((n) => n.id));
  const children = (parentId) => nodes.filter((n) => (n.parent ? n.parent.id : null) === parentId
    || (parentId === null && n.parent && !ids.has(n.parent.id)));
  const render = (parentId, depth) => {
    const list = children(parentId);
    if (!list.length || depth > 50) return "";
    return `<ul class="tree">${list.map((n) => `<li data-node="${esc(n.id)}">${n.kind === "job"
      ? `<a class="mono" href="#/jobs/${enc(n.id)}">${esc(n.id)}</a>${n.id === current ? " (this job)" : ""}`
      : `<span class="mono">${esc(n.id)}</span>`} ${n.label}${render(n.id, depth + 1)}</li>`).join("")}</ul>`;
  };
  box.innerHTML = nodes.length ? render(null, 0) : `<p class="muted">Nothing else.</p>`;
}

async function correlationPage(id, mine) {
  main().innerHTML = `<h1>Correlation <span class="mono">${esc(id)}</span></h1><div class="card" id="tree"></div>`;
  async function refresh() { await correlationTree(id, document.getElementById("tree"), null); }
  await refresh();
  poll(refresh, 2000, mine);
}

async function topicsPage(mine) {
  main().innerHTML = `<h1>Topics</h1><div id="topics"><p class="muted">Loading…</p></div>`;
  async function refresh() {
    const list = await api("GET", "/v1/topics");
    const shown = await Promise.all(list.topics.map((t) => api("GET", `/v1/topics/${enc(t.topic)}`)));
    const box = document.getElementById("topics");
    if (!box) return;
    box.innerHTML = shown.length ? shown.map((t) => `<div class="card"><h2 style="margin-top:0">${esc(t.topic)}</h2>
      <table><thead><tr><th>Subscriber</th><th>Types</th><th class="num">Queued</th><th class="num">Running</th>
      <th class="num">Dead letters</th></tr></thead><tbody>
      ${t.subscriptions.map((s) => `<tr><td><a href="#/functions/${enc(s.function)}">${esc(s.function)}</a>${s.paused ? " " + status("paused") : ""}</td>
        <td class="mono">${esc((s.types || ["*"]).join(", "))}</td><td class="num">${esc(s.backlog.queued + s.backlog.delayed)}</td>
        <td class="num">${esc(s.backlog.running)}</td><td class="num">${esc(s.backlog.dead_letters)}</td></tr>`).join("")}
      </tbody></table></div>`).join("") : `<p class="muted">No subscriptions yet.</p>`;
  }
  await refresh();
  poll(refresh, 2000, mine);
}

// ---- plumbing ---------------------------------------------------------------------------

function report(e) {
  if (e instanceof SignIn) return;
  console.error(e);
  toast(e.message || String(e));
}

// A button's action: disabled while it runs; its error is shown.
function act(button, run) {
  return async () => {
    button.disabled = true;
    try { await run(); } catch (e) { report(e); } finally { button.disabled = false; }
  };
}

let generation = 0;

async function route() {
  for (const c of cleanups.splice(0)) c();
  setLive(false);
  const mine = ++generation;
  const hash = location.hash.replace(/^#/, "") || "/";
  let parts;
  try {
    parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  } catch (_) {
    parts = ["?"];
  }
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active",
    (a.dataset.nav === "overview" && (parts.length === 0 || parts[0] === "functions")) || a.dataset.nav === parts[0]));
  try {
    if (parts.length === 0) await overview(mine);
    else if (parts[0] === "functions" && parts[1]) await functionPage(parts[1], mine);
    else if (parts[0] === "jobs" && parts[1]) await jobPage(parts[1], mine);
    else if (parts[0] === "correlation" && parts[1]) await correlationPage(parts[1], mine);
    else if (parts[0] === "topics") await topicsPage(mine);
    else main().innerHTML = `<p>Nothing here. <a href="#/">Functions</a></p>`;
  } catch (e) {
    if (e instanceof SignIn || mine !== generation) return;
    main().innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("token").focus();
}

async function start() {
  session = await fetch("/ui/session", { credentials: "same-origin" }).then((r) => r.json());
  document.getElementById("sign-out").hidden = !session.signed_in || session.open;
  if (!session.signed_in) { showLogin(); return; }
  await route();
}

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", route);
  document.getElementById("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("login-error");
    error.textContent = "";
    const r = await fetch("/ui/login", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: document.getElementById("token").value }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      error.textContent = (body.error && body.error.message) || "Sign-in failed";
      return;
    }
    document.getElementById("token").value = "";
    document.getElementById("login").hidden = true;
    await start();
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "x-sluice-csrf": csrf() } });
    location.hash = "#/";
    location.reload();
  });
  document.getElementById("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = document.getElementById("search-input").value.trim();
    if (!q) return;
    location.hash = /^[0-9A-HJKMNP-TV-Z]{26}$/i.test(q) ? `#/jobs/${enc(q.toUpperCase())}` : `#/correlation/${enc(q)}`;
  });
  start().catch(report);
});
