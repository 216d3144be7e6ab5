// sip-router operator console: renders the JSON admin API; no framework, no build step.
// The admin token lives in sessionStorage (this tab only) and is sent as the Authorization
// header; it never goes into a URL or a cookie. Data is written with textContent only.
"use strict";

(function () {
  const TOKEN_KEY = "sip-router-admin-token";
  const POLL_MS = 3000;
  const $ = (id) => document.getElementById(id);

  let pollTimer = null;
  let callsSignature = "";
  let calls = [];

  // ---- the admin API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(describeError(status, body));
      this.status = status;
      this.body = body;
    }
  }

  function describeError(status, body) {
    if (body && Array.isArray(body.errors)) return body.errors.join("\n");
    if (body && typeof body.error === "string") return body.error;
    if (body && typeof body.detail === "string") return `${status}: ${body.detail}`;
    return `the service answered HTTP ${status}`;
  }

  async function api(path, options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Authorization: `Bearer ${token || ""}` };
    const init = { method: "GET", headers, cache: "no-store", credentials: "omit" };
    if (options && options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.method = "POST";
      init.body = JSON.stringify(options.body);
    }
    if (options && options.method) init.method = options.method;
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, { error: `the service cannot be reached (${err.message})` });
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (response.status === 401) {
      signOut("That admin token was not accepted.");
      throw new ApiError(401, { error: "the admin token was not accepted" });
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // ---- small DOM helpers ------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function facts(target, pairs) {
    target.replaceChildren();
    for (const [label, value] of pairs) {
      if (value === undefined || value === null || value === "") continue;
      target.append(el("dt", { text: label }), el("dd", { text: String(value) }));
    }
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setState(node, text, kind) {
    node.textContent = text;
    node.className = `state ${kind || ""}`;
    show(node, Boolean(text));
  }

  function say(text) {
    $("status").textContent = text;
  }

  function localTime(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function badge(text) {
    return el("span", { className: `badge badge-${String(text).replace(/[^a-z_]/g, "")}`, text });
  }

  // ---- sign in / out ----------------------------------------------------------------

  function signedIn() {
    return Boolean(sessionStorage.getItem(TOKEN_KEY));
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopPolling();
    calls = [];
    callsSignature = "";
    $("calls-rows").replaceChildren();
    show($("nav"), false);
    show($("logout"), false);
    showView("login");
    const error = $("login-error");
    error.textContent = message || "";
    show(error, Boolean(message));
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    show($("login-error"), false);
    try {
      await api("/admin/rules");
    } catch (err) {
      if (err.status !== 401) signOut(`Cannot sign in: ${err.message}`);
      return;
    }
    show($("nav"), true);
    show($("logout"), true);
    if (!location.hash || location.hash === "#login") location.hash = "#calls";
    else route();
  }

  // ---- views ------------------------------------------------------------------------

  function showView(name) {
    for (const section of document.querySelectorAll("main > .view")) {
      section.hidden = section.id !== `view-${name}`;
    }
    for (const link of document.querySelectorAll("#nav a")) {
      const current = link.dataset.view === name || (name === "call" && link.dataset.view === "calls");
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function route() {
    if (!signedIn()) {
      signOut("");
      return;
    }
    show($("nav"), true);
    show($("logout"), true);
    const hash = decodeURIComponent(location.hash.slice(1));
    const [view, ...rest] = hash.split("/");
    stopPolling();
    say("");
    if (view === "call" && rest.length) {
      showView("call");
      loadCall(rest.join("/"));
    } else if (view === "rules") {
      showView("rules");
      loadRules();
    } else if (view === "simulate") {
      showView("simulate");
    } else if (view === "replay") {
      showView("replay");
    } else {
      showView("calls");
      startPolling();
    }
    document.title = `sip-router: ${view || "calls"}`;
  }

  // ---- Calls ------------------------------------------------------------------------

  function startPolling() {
    loadCalls();
    pollTimer = setInterval(() => {
      if (document.visibilityState === "visible") loadCalls();
    }, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer !== null) clearInterval(pollTimer);
    pollTimer = null;
  }

  async function loadCalls() {
    const state = $("calls-state");
    try {
      const body = await api("/admin/calls?limit=1000");
      calls = Array.isArray(body.calls) ? body.calls : [];
    } catch (err) {
      if (err.status === 401) return;
      setState(state, `Cannot load the calls: ${err.message}`, "error");
      return;
    }
    const signature = `${calls.length}:${calls.length ? calls[0].call_id + calls[0].time : ""}`;
    if (signature === callsSignature) return;
    callsSignature = signature;
    fillFilters();
    renderCalls();
  }

  function fillFilters() {
    for (const select of document.querySelectorAll("[data-filter]")) {
      const key = select.dataset.filter;
      const values = new Set(calls.map((c) => c[key]).filter((v) => v !== undefined && v !== null));
      const chosen = select.value;
      const known = new Set(Array.from(select.options).map((o) => o.value));
      for (const value of Array.from(values).sort()) {
        const text = key === "api" ? apiName(value) : value;
        if (!known.has(String(value))) select.append(el("option", { value, text }));
      }
      select.value = chosen;
    }
  }

  // The API that announced a call, as OpenAI names it (entries before GPT-Live have none).
  function apiName(api) {
    return api === "live" ? "GPT-Live" : "Realtime";
  }

  function renderCalls() {
    const filters = {};
    for (const select of document.querySelectorAll("[data-filter]")) {
      if (select.value) filters[select.dataset.filter] = select.value;
    }
    const shown = calls.filter((c) =>
      Object.entries(filters).every(([key, value]) => String(c[key]) === value),
    );
    const rows = document.createDocumentFragment();
    for (const call of shown) {
      const link = el("a", { href: `#call/${encodeURIComponent(call.call_id)}`, text: localTime(call.time) });
      rows.append(
        el(
          "tr",
          {},
          el("td", {}, link),
          el("td", { text: call.caller || "" }),
          el("td", { text: call.called || "" }),
          el("td", { text: apiName(call.api) }),
          el("td", { text: call.rule || "" }),
          el("td", {}, badge(call.action || "")),
          el("td", {}, badge(call.outcome || "")),
          el("td", { className: "num", text: call.latency_ms ?? "" }),
        ),
      );
    }
    $("calls-rows").replaceChildren(rows);
    const filtered = Object.keys(filters).length > 0;
    $("calls-count").textContent = filtered
      ? `${shown.length} of ${calls.length} calls`
      : `${calls.length} calls`;
    show($("calls-table"), shown.length > 0);
    if (calls.length === 0) {
      setState($("calls-state"), "No calls yet. Calls appear here as they arrive (checked every 3 s).", "empty");
    } else if (shown.length === 0) {
      setState($("calls-state"), "No call matches these filters.", "empty");
    } else {
      setState($("calls-state"), "");
    }
  }

  // ---- Call -------------------------------------------------------------------------

  async function loadCall(callId) {
    $("call-id").textContent = callId;
    show($("call-body"), false);
    setState($("call-state"), "Loading the call…", "loading");
    let call;
    try {
      call = await api(`/admin/calls/${encodeURIComponent(callId)}`);
    } catch (err) {
      if (err.status === 401) return;
      const text = err.status === 404 ? "This call is not in the call log (it keeps the last 1,000)." : `Cannot load the call: ${err.message}`;
      setState($("call-state"), text, err.status === 404 ? "empty" : "error");
      return;
    }
    setState($("call-state"), "");
    renderCall(call);
    show($("call-body"), true);
  }

  function renderCall(call) {
    facts($("call-facts"), [
      ["Time", localTime(call.time)],
      ["Caller", call.caller],
      ["Called", call.called],
      ["API", apiName(call.api)],
      ["Action", call.action],
      ["Outcome", call.outcome],
      ["Profile", call.profile],
      ["Status code", call.status_code],
      ["Target", call.target_uri],
      ["Latency", call.latency_ms !== undefined ? `${call.latency_ms} ms` : null],
      ["Failed action", call.failed_action],
      ["Failure", call.failure],
      ["Ruleset", call.ruleset],
      ["Ended", call.ended_at ? localTime(call.ended_at) : null],
      ["Duration", call.duration_s !== undefined ? `${call.duration_s} s` : null],
      ["End reason", call.end_reason],
      ["Decision inputs kept", call.inputs_kept ? "yes (for replay)" : "no"],
    ]);
    const decision = call.decision || {};
    facts($("call-decision"), [
      ["Rule", decision.rule || call.rule],
      ["Action chosen", decision.action],
      ["Action sent", decision.sent_action],
      ["Error", decision.error],
      [
        "Rules tried",
        decision.rules_total !== undefined ? `${decision.rules_tried} of ${decision.rules_total}` : null,
      ],
    ]);
    const trace = $("call-trace");
    trace.replaceChildren();
    for (const step of decision.trace || []) {
      trace.append(
        el(
          "li",
          { className: step.matched ? "match" : "nomatch" },
          el("strong", { text: step.rule }),
          ` ${step.matched ? "matched" : "did not match"}: ${step.reason}`,
        ),
      );
    }
    const body = $("call-requests").tBodies[0];
    body.replaceChildren();
    for (const request of call.requests || []) {
      body.append(
        el(
          "tr",
          {},
          el("td", { text: request.verb }),
          el("td", { text: request.status ?? "none" }),
          el("td", {}, badge(request.outcome)),
          el("td", { className: "num", text: request.attempts }),
          el("td", { className: "num", text: request.latency_ms }),
        ),
      );
    }
    if (!(call.requests || []).length) {
      body.append(el("tr", {}, el("td", { colspan: 5, text: "No request was sent (dry-run, or none needed)." })));
    }
    renderLater(call);
    const active = call.action === "accept" && call.outcome === "processed" && !call.ended_at;
    const hangup = $("hangup");
    show(hangup, active);
    hangup.dataset.callId = call.call_id;
  }

  function renderLater(call) {
    // The call's later life, when sip-router stayed with it: sideband events, transcript.
    const later = $("call-later");
    later.replaceChildren();
    if (Array.isArray(call.events) && call.events.length) {
      later.append(el("h3", { text: "Sideband events" }));
      const list = el("ol", { className: "events" });
      for (const event of call.events) {
        const parts = [event.at ? localTime(event.at) : "", event.type || "", event.name || "", event.status ?? "", event.latency_ms !== undefined ? `${event.latency_ms} ms` : ""];
        list.append(el("li", { text: parts.filter((p) => p !== "").join(" · ") }));
      }
      later.append(list);
    }
    if (call.transfer) {
      later.append(el("h3", { text: "Transfer" }));
      later.append(el("p", { text: `${call.transfer.target_uri || ""} · ${call.transfer.status || ""}` }));
    }
    if (Array.isArray(call.transcript) && call.transcript.length) {
      later.append(el("h3", { text: "Transcript" }));
      const list = el("ol", { className: "transcript" });
      for (const turn of call.transcript) {
        list.append(el("li", {}, el("strong", { text: `${turn.role || turn.speaker || ""}: ` }), turn.text || ""));
      }
      later.append(list);
    }
  }

  async function hangup() {
    const callId = $("hangup").dataset.callId;
    if (!callId || !window.confirm(`Hang up call ${callId}?`)) return;
    try {
      const body = await api(`/admin/calls/${encodeURIComponent(callId)}/hangup`, { method: "POST" });
      say(`Hangup: ${body.status}`);
      show($("hangup"), false);
    } catch (err) {
      say(`Hangup failed: ${err.message}`);
    }
  }

  // ---- Rules ------------------------------------------------------------------------

  async function loadRules() {
    show($("rules-body"), false);
    setState($("rules-state"), "Loading the rules…", "loading");
    let rules;
    try {
      rules = await api("/admin/rules?contents=true");
    } catch (err) {
      if (err.status === 401) return;
      setState($("rules-state"), `Cannot load the rules: ${err.message}`, "error");
      return;
    }
    setState($("rules-state"), "");
    facts($("rules-facts"), [
      ["Active version", rules.version || "none"],
      ["Loaded at", localTime(rules.loaded_at)],
      ["Files", (rules.files || []).length],
    ]);
    const problems = $("rules-problems");
    problems.replaceChildren();
    if (rules.last_error) {
      problems.append(el("h3", { text: "Last reload error" }), el("pre", { className: "error", text: rules.last_error }));
    }
    if ((rules.warnings || []).length) {
      problems.append(el("h3", { text: "Warnings" }), el("pre", { className: "warning", text: rules.warnings.join("\n") }));
    }
    const hits = $("rules-hits").tBodies[0];
    hits.replaceChildren();
    for (const [rule, count] of Object.entries(rules.rule_hits || {})) {
      hits.append(el("tr", {}, el("td", { text: rule }), el("td", { className: "num", text: count })));
    }
    const files = $("rules-files");
    files.replaceChildren();
    for (const file of rules.contents || []) {
      const details = el("details", {}, el("summary", { text: file.name || file.file, title: file.file }));
      details.append(el("pre", { className: file.error ? "error" : "code", text: file.error || file.text }));
      files.append(details);
    }
    if (files.firstElementChild) files.firstElementChild.open = true;
    show($("rules-body"), true);
    return rules;
  }

  async function reload() {
    const button = $("reload");
    button.disabled = true;
    say("Reloading the rules…");
    try {
      const body = await api("/admin/reload", { method: "POST" });
      say(`Rules reloaded: version ${body.version}.`);
    } catch (err) {
      say(`Reload failed; the running rules stay in service.\n${err.message}`);
    } finally {
      button.disabled = false;
      loadRules();
    }
  }

  // ---- Simulate ---------------------------------------------------------------------

  function parseHeaders(text) {
    const headers = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf(":");
      if (at <= 0) throw new Error(`a header line is "Name: value", got "${line}"`);
      headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    return headers;
  }

  async function simulate(event) {
    event.preventDefault();
    const error = $("simulate-error");
    const result = $("simulate-result");
    show(error, false);
    const request = { from: $("sim-from").value.trim(), to: $("sim-to").value.trim() };
    try {
      const headers = parseHeaders($("sim-headers").value);
      if (Object.keys(headers).length) request.headers = headers;
    } catch (err) {
      error.textContent = err.message;
      show(error, true);
      return;
    }
    if ($("sim-at").value.trim()) request.at = $("sim-at").value.trim();
    request.api = $("sim-api").value;
    result.replaceChildren(el("p", { className: "state loading", text: "Deciding…" }));
    let decision;
    try {
      decision = await api("/admin/simulate", { body: request });
    } catch (err) {
      result.replaceChildren();
      error.textContent = err.message;
      show(error, true);
      return;
    }
    const dl = el("dl", { className: "facts" });
    facts(dl, [
      ["Action", decision.action],
      ["Rule", decision.rule || "default (no rule matched)"],
      ["API", apiName(decision.api)],
      ["Profile", decision.profile],
      ["Request", `POST ${decision.request.path}`],
      ["Ruleset", decision.ruleset],
      ["Error", decision.error],
    ]);
    const trace = el("ol", { className: "trace" });
    for (const step of decision.trace || []) {
      trace.append(
        el(
          "li",
          { className: step.matched ? "match" : "nomatch" },
          el("strong", { text: step.rule }),
          ` ${step.matched ? "matched" : "did not match"}: ${step.reason}`,
        ),
      );
    }
    result.replaceChildren(
      el("h3", { text: "Decision" }),
      dl,
      el("h3", { text: "Trace" }),
      trace,
      el("h3", { text: "Request body" }),
      el("pre", { className: "code", text: JSON.stringify(decision.request.body, null, 2) }),
    );
  }

  // ---- Replay -----------------------------------------------------------------------

  function readInto(fileInput, textarea, nameInput) {
    fileInput.addEventListener("change", () => {
      const file = fileInput.files && fileInput.files[0];
      if (!file) return;
      file.text().then((text) => {
        textarea.value = text;
        if (nameInput && !nameInput.value) nameInput.value = file.name;
      });
    });
  }

  function addExtraFile(name, text) {
    const fragment = $("extra-file").content.cloneNode(true);
    const row = fragment.querySelector(".extra");
    const nameInput = row.querySelector("input[name=name]");
    const textarea = row.querySelector("textarea");
    nameInput.value = name || "";
    textarea.value = text || "";
    readInto(row.querySelector("input[type=file]"), textarea, nameInput);
    row.querySelector(".remove").addEventListener("click", () => row.remove());
    $("replay-extra").append(row);
    return nameInput;
  }

  async function startFromActive() {
    let rules;
    try {
      rules = await api("/admin/rules?contents=true");
    } catch (err) {
      say(`Cannot read the active rules: ${err.message}`);
      return;
    }
    const contents = rules.contents || [];
    if (!contents.length) return;
    const main = contents[0].file;
    const folder = main.includes("/") ? main.slice(0, main.lastIndexOf("/") + 1) : "";
    $("replay-main-name").value = main.slice(folder.length);
    $("replay-main").value = contents[0].text || "";
    for (const row of document.querySelectorAll("#replay-extra .extra")) row.remove();
    for (const file of contents.slice(1)) {
      const relative = file.file.startsWith(folder) ? file.file.slice(folder.length) : file.file;
      addExtraFile(relative, file.text || "");
    }
    say("The active rule files are in the form: edit them, then replay.");
  }

  async function replay(event) {
    event.preventDefault();
    const errors = $("replay-errors");
    const result = $("replay-result");
    show(errors, false);
    const main = $("replay-main-name").value.trim();
    const files = { [main]: $("replay-main").value };
    for (const row of document.querySelectorAll("#replay-extra .extra")) {
      const name = row.querySelector("input[name=name]").value.trim();
      if (name) files[name] = row.querySelector("textarea").value;
    }
    result.replaceChildren(el("p", { className: "state loading", text: "Loading the candidate and deciding the recorded calls…" }));
    let report;
    try {
      report = await api("/admin/replay", { body: { files, main } });
    } catch (err) {
      result.replaceChildren();
      errors.replaceChildren(
        el("p", { text: err.status === 422 && err.body && err.body.errors ? "The candidate does not load:" : "Replay failed:" }),
        el("pre", { text: err.message }),
      );
      show(errors, true);
      return;
    }
    const summary = el(
      "p",
      { className: "summary" },
      `${report.changed.length} of ${report.calls} recorded calls would be decided differently`,
      report.skipped ? ` (${report.skipped} skipped: recorded without inputs)` : "",
      `. Candidate version ${report.version}.`,
    );
    const parts = [summary];
    if ((report.warnings || []).length) {
      parts.push(el("pre", { className: "warning", text: report.warnings.join("\n") }));
    }
    if (report.changed.length) {
      const body = el("tbody");
      for (const change of report.changed) {
        body.append(
          el(
            "tr",
            {},
            el(
              "td",
              {},
              el("a", { href: `#call/${encodeURIComponent(change.call_id)}`, text: localTime(change.time) }),
              el("code", { className: "call-id", text: change.call_id }),
            ),
            el("td", { text: `${change.before.rule} → ${change.before.action}` }),
            el("td", { text: `${change.after.rule} → ${change.after.action}` }),
          ),
        );
      }
      parts.push(
        el(
          "div",
          { className: "table-wrap" },
          el(
            "table",
            { id: "replay-changes" },
            el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Call" }), el("th", { scope: "col", text: "Before" }), el("th", { scope: "col", text: "After" }))),
            body,
          ),
        ),
      );
    } else {
      parts.push(el("p", { className: "state empty", text: "No recorded call would change." }));
    }
    result.replaceChildren(...parts);
  }

  // ---- wiring -----------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut("Signed out."));
    $("calls-filter").addEventListener("change", renderCalls);
    $("calls-filter").addEventListener("submit", (e) => e.preventDefault());
    $("hangup").addEventListener("click", hangup);
    $("reload").addEventListener("click", reload);
    $("simulate-form").addEventListener("submit", simulate);
    $("replay-form").addEventListener("submit", replay);
    $("replay-add").addEventListener("click", () => addExtraFile().focus());
    $("replay-current").addEventListener("click", startFromActive);
    readInto($("replay-main-file"), $("replay-main"), null);
    window.addEventListener("hashchange", route);
    route();
  });
})();
