// The status page: sign in, then poll /ui/api/cluster every 2 s and /ui/api/details every 10 s.
// Read-only: nothing here sends anything but GET requests.
"use strict";

(() => {
  const { key, api, Refused, el, svg, fill, number, bytes, seconds, when, badge } = HS;
  const POLL_MS = 2000;
  const DETAILS_MS = 10000;
  const WINDOW_S = 300;
  const COLOURS = ["#1f6fb2", "#c2410c", "#15803d", "#7e22ce", "#a16207"];
  const DASHES = ["", "6 3", "2 3", "10 3 2 3", "1 2"];
  const $ = (id) => document.getElementById(id);
  const samples = [];
  let running = false;
  let timers = [];

  // -- signing in and out --------------------------------------------------------------------
  async function start() {
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    let info = { key_required: true, health: null };
    try {
      info = await api("/ui/api/login");
    } catch (error) {
      showLogin("This node did not answer: " + error.message);
      return;
    }
    if (!info.key_required || key.get()) {
      showApp(info.key_required);
    } else {
      showLogin("", info.health);
    }
  }

  function showLogin(message, health) {
    stop();
    $("app").hidden = true;
    $("verdict").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("updated").textContent = "not signed in";
    $("access").textContent = "";
    $("login-error").textContent = message || "";
    if (health) {
      $("health-facts").textContent =
        "This node: " + health.status + ", role " + health.role + ", hotstandby " + health.version +
        (health.reason ? " (" + health.reason + ")" : "") + ".";
    }
    $("key").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const field = $("key");
    const value = field.value.trim();
    field.value = "";
    if (!value) return;
    key.set(value);
    $("sign-in").disabled = true;
    try {
      const view = await api("/ui/api/cluster");
      showApp(true);
      render(view);
    } catch (error) {
      key.clear();
      showLogin(error instanceof Refused ? "That key was refused." : "No answer: " + error.message);
    } finally {
      $("sign-in").disabled = false;
    }
  }

  function signOut(message) {
    key.clear();
    samples.length = 0;
    showLogin(message);
    api("/ui/api/login").then((info) => showLogin(message, info.health), () => {});
  }

  function showApp(keyed) {
    $("login").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = !keyed;
    if (running) return;
    running = true;
    loop(pollCluster, POLL_MS);
    loop(pollDetails, DETAILS_MS);
  }

  function stop() {
    running = false;
    timers.forEach(clearTimeout);
    timers = [];
  }

  // One request at a time per loop: a slow node is never asked again before it answered.
  function loop(poll, every) {
    const tick = async () => {
      if (!running) return;
      await poll();
      if (running) timers.push(setTimeout(tick, every));
    };
    tick();
  }

  async function pollCluster() {
    try {
      render(await api("/ui/api/cluster"));
    } catch (error) {
      if (error instanceof Refused) return signOut("The key is no longer accepted.");
      const verdict = $("verdict");
      verdict.hidden = false;
      verdict.className = "verdict bad";
      fill(verdict, [badge("NO ANSWER", "bad"), " This node did not answer: " + error.message]);
    }
  }

  async function pollDetails() {
    try {
      const details = await api("/ui/api/details");
      renderHistory(details.history || {});
      renderConflicts(details.conflicts || {});
      renderPlugins(details.plugins || {});
    } catch (error) {
      if (error instanceof Refused) signOut("The key is no longer accepted.");
    }
  }

  // -- the cluster -----------------------------------------------------------------------------
  function render(view) {
    $("cluster-name").textContent = view.cluster_name ? "· cluster " + view.cluster_name : "";
    $("updated").textContent = "updated " + new Date(view.generated_unix * 1000).toLocaleTimeString("en-GB");
    $("access").textContent = {
      operator: "· signed in with the node key",
      "read-only": "· signed in read-only (STATUS_KEY)",
      open: "· no key configured on this node",
    }[view.access] || "";
    const verdict = $("verdict");
    verdict.hidden = false;
    verdict.className = "verdict " + (view.verdict.healthy ? "good" : "bad");
    fill(verdict, [
      badge(view.verdict.healthy ? "HEALTHY" : "ATTENTION", view.verdict.healthy ? "good" : "bad"),
      " " + view.verdict.text,
    ]);
    fill($("nodes").tBodies[0], view.nodes.map(nodeRow));
    const self = view.nodes.find((n) => n.self) || {};
    $("ha").textContent = self.ha ? "This node's last decision: " + self.ha : "";
    addSample(view);
    drawLag(view.replica_max_lag);
    renderErrors(view.recent_problems || []);
  }

  function roleBadge(node) {
    if (!node.reachable) return badge("unreachable", "bad");
    if (node.role === "master") {
      return node.writable ? badge("leader", "good") : badge("leader, not writable", "warn");
    }
    return badge("replica", "info");
  }

  function healthBadge(node) {
    const tone = { healthy: "good", degraded: "warn" }[node.health] || "bad";
    const shown = [badge(node.health || "unknown", tone)];
    if (node.health_reason) shown.push(el("div", { class: "muted small" }, node.health_reason));
    if (!node.reachable && node.error) shown.push(el("div", { class: "muted small" }, node.error));
    return shown;
  }

  function connectedText(node) {
    if (!node.reachable) return "-";
    if (node.role === "master") {
      if (!node.replicas_total) return "no replica configured";
      return node.replicas_connected + " of " + node.replicas_total + " replica(s)";
    }
    return node.connected ? "yes, to its leader" : "no";
  }

  function progressCell(node) {
    const p = node.progress;
    if (p) {
      const label = p.kind === "seeding" ? "Seeding" : "Catching up";
      const bar = el("progress", { max: Math.max(1, p.files_total), value: p.files_done, "aria-label": label });
      let text = label + ": " + number(p.files_done) + " of " + number(p.files_total) + " files";
      text += p.bytes_total ? ", " + bytes(p.bytes_done) + " of " + bytes(p.bytes_total) : "";
      let pace = p.stalled ? "stalled" : number(Math.round(p.files_per_second)) + " files/s";
      if (!p.stalled && p.bytes_per_second) pace += ", " + bytes(p.bytes_per_second) + "/s";
      const eta = p.eta_seconds === null ? "time left unknown" : "about " + seconds(p.eta_seconds) + " left";
      return [bar, el("div", { class: "progress-text" }, text), el("div", { class: "muted small" }, pace + "; " + eta)];
    }
    const shown = [];
    if (node.pending_changes) shown.push("behind: " + number(node.pending_changes) + " change(s)");
    else if (!node.reachable || node.role !== "slave") return "-";
    else if (node.pending_changes === 0) shown.push(badge("in step", "good"));
    else shown.push(node.synced ? "synced" : "not synced yet");
    const last = node.last_long_work;
    if (last) {
      const what = last.kind === "seeding" ? "seeded" : "caught up";
      shown.push(el("div", { class: "muted small" },
        "last " + what + " " + number(last.files) + " files (" + bytes(last.bytes) + ") in " + seconds(last.seconds)));
    }
    return shown;
  }

  function nodeRow(node) {
    const name = [el("span", { class: "node-name" }, node.name)];
    if (node.node_id) name.push(el("div", { class: "muted small" }, "id " + String(node.node_id).slice(0, 12)));
    const cell = (label, ...content) => el("td", { "data-label": label }, ...content);
    return el("tr", { class: node.self ? "self" : null, "data-node": node.name },
      el("th", { scope: "row", "data-label": "Node" }, name),
      cell("Role", roleBadge(node)),
      cell("Epoch", node.reachable ? number(node.epoch) : "-"),
      cell("Health", healthBadge(node)),
      cell("Writable", node.reachable ? (node.writable ? "yes" : "no") : "-"),
      cell("Connected", connectedText(node)),
      cell("Lag", node.lag_seconds === undefined || node.lag_seconds === null ? "-" : seconds(node.lag_seconds)),
      cell("Pending", number(node.pending_changes)),
      cell("Progress", progressCell(node)));
  }

  // -- the lag chart ---------------------------------------------------------------------------
  function addSample(view) {
    const t = view.generated_unix;
    const values = {};
    for (const node of view.nodes) values[node.name] = node.reachable ? Number(node.lag_seconds || 0) : null;
    samples.push({ t, values });
    while (samples.length && samples[0].t < t - WINDOW_S) samples.shift();
  }

  function drawLag(bound) {
    const names = [...new Set(samples.flatMap((s) => Object.keys(s.values)))];
    const width = Math.max(300, Math.round($("lag-chart").clientWidth || 640));
    const height = 180;
    const pad = { left: 44, right: 8, top: 10, bottom: 22 };
    const now = samples.length ? samples[samples.length - 1].t : 0;
    const all = samples.flatMap((s) => Object.values(s.values).filter((v) => v !== null));
    const top = Math.max(1, ...all) * 1.15;
    const x = (t) => pad.left + ((t - (now - WINDOW_S)) / WINDOW_S) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
    const parts = [svg("title", { id: "lag-chart-title" }, "Replication lag of each node over the last 5 minutes")];
    for (const v of [0, top / 2, top]) {
      parts.push(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(svg("text", { x: pad.left - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, v.toFixed(v < 10 ? 1 : 0) + " s"));
    }
    if (bound && bound < top) {
      parts.push(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(bound), y2: y(bound), class: "bound" }));
      parts.push(svg("text", { x: width - pad.right, y: y(bound) - 3, class: "axis", "text-anchor": "end" }, "lag bound " + bound + " s"));
    }
    parts.push(svg("text", { x: pad.left, y: height - 4, class: "axis" }, "5 min ago"));
    parts.push(svg("text", { x: width - pad.right, y: height - 4, class: "axis", "text-anchor": "end" }, "now"));
    const legend = [];
    names.forEach((name, i) => {
      const style = { stroke: COLOURS[i % COLOURS.length], "stroke-dasharray": DASHES[i % DASHES.length] || "none" };
      let run = [];
      const flush = () => {
        if (run.length > 1) parts.push(svg("polyline", { points: run.join(" "), class: "series", ...style }));
        if (run.length === 1) parts.push(svg("circle", { cx: run[0].split(",")[0], cy: run[0].split(",")[1], r: 2, fill: style.stroke }));
        run = [];
      };
      for (const s of samples) {
        const v = s.values[name];
        if (v === null || v === undefined) flush();
        else run.push(x(s.t).toFixed(1) + "," + y(v).toFixed(1));
      }
      flush();
      const values = samples.map((s) => s.values[name]).filter((v) => v !== null && v !== undefined);
      const last = samples.length ? samples[samples.length - 1].values[name] : null;
      const swatch = svg("svg", { width: 28, height: 10, "aria-hidden": "true" },
        svg("line", { x1: 0, x2: 28, y1: 5, y2: 5, "stroke-width": 2.5, ...style }));
      legend.push(el("li", {}, swatch, " " + name + ": now " + (last === null || last === undefined ? "no answer" : seconds(last)) +
        ", highest " + (values.length ? seconds(Math.max(...values)) : "-") + " over the window"));
    });
    const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, width, height, role: "img", "aria-labelledby": "lag-chart-title" }, parts);
    fill($("lag-chart"), [chart]);
    fill($("lag-legend"), legend);
  }

  // -- the slower sections -----------------------------------------------------------------------
  function drillItem(drill) {
    const passed = drill.result === "pass";
    const phases = (drill.phases || []).map((p) => {
      const failed = p.failed_requests || {};
      const failedCount = (failed.writes || 0) + (failed.reads || 0);
      return (p.name || "phase") + ": switchover " + seconds(p.switchover_seconds) +
        ", HAProxy noticed after " + seconds(p.haproxy_detection_seconds) +
        ", promotion after " + seconds(p.promotion_seconds) +
        ", " + number(p.lost_writes) + " acknowledged write(s) lost, " + number(failedCount) + " request(s) failed";
    });
    const limits = drill.thresholds || {};
    const link = drill.has_report
      ? el("a", { href: "/ui/drill?id=" + encodeURIComponent(drill.drill_id), class: "drill-link" }, "Report and timeline")
      : el("span", { class: "muted" }, "no report recorded with this drill");
    return el("li", {},
      badge(passed ? "PASS" : String(drill.result || "?").toUpperCase(), passed ? "good" : "bad"), " ",
      el("strong", {}, when(drill.started_at)), " ",
      el("span", { class: "muted" }, "(bound " + seconds(limits.max_switchover) + ", target " + seconds(limits.target_switchover) + ")"),
      phases.map((text) => el("div", {}, text)),
      el("div", {}, link));
  }

  function renderHistory(history) {
    if (history.error) {
      fill($("drills"), [el("li", { class: "error" }, history.error)]);
      fill($("failovers"), []);
      return;
    }
    const drills = history.drills || [];
    fill($("drills"), drills.length ? drills.map(drillItem) : [el("li", { class: "muted" }, "no drill recorded")]);
    const failovers = history.failovers || [];
    fill($("failovers"), failovers.length ? failovers.map((e) => el("li", {},
      badge(e.kind, e.kind === "demotion" ? "warn" : "info"), " ",
      el("strong", {}, when(e.at)), " epoch " + number(e.epoch) + ": " + (e.reason || "") + " ",
      el("span", { class: "muted" }, "(" + e.source + ")"))) : [el("li", { class: "muted" }, "none recorded")]);
    $("history-notes").textContent = (history.notes || []).join("; ");
  }

  function renderConflicts(conflicts) {
    if (conflicts.error) {
      $("conflicts-summary").textContent = "Could not read the conflicts: " + conflicts.error;
      return;
    }
    const epochs = Object.entries(conflicts.by_epoch || {}).map(([k, v]) => "epoch " + k + ": " + v).join(", ");
    $("conflicts-summary").textContent = conflicts.count
      ? number(conflicts.count) + " file(s) kept aside in " + conflicts.root + " (" + epochs + "); newest first:"
      : "None: no demoted leader had divergent writes.";
    fill($("conflicts"), (conflicts.newest || []).map((c) => el("li", {},
      el("code", {}, c.path), " epoch " + c.epoch + ", " + bytes(c.size) + ", changed " + when(new Date(c.mtime * 1000).toISOString()),
      el("div", { class: "muted small" }, "kept as " + c.preserved_as))));
  }

  function renderPlugins(plugins) {
    const body = $("plugins").tBodies[0];
    if (plugins.error || !plugins.available) {
      $("plugins-summary").textContent = plugins.error ? "Could not list the plugins: " + plugins.error : plugins.note || "";
      fill(body, []);
      $("plugins").hidden = true;
      fill($("quarantine"), []);
      return;
    }
    const counts = Object.entries(plugins.counts || {}).map(([k, v]) => v + " " + k.replace("_", " ")).join(", ");
    $("plugins-summary").textContent = plugins.total ? number(plugins.total) + " item(s): " + counts : "No package or installed plugin on this node.";
    $("plugins").hidden = !plugins.total;
    const tone = { ok: "good", corrupted: "bad", missing: "warn" };
    fill(body, (plugins.plugins || []).map((p) => el("tr", {},
      el("th", { scope: "row", "data-label": "Identifier" }, el("code", {}, p.identifier)),
      el("td", { "data-label": "Kind" }, p.kind),
      el("td", { "data-label": "Integrity" }, badge(p.status, tone[p.status] || "neutral"), p.detail ? el("div", { class: "muted small" }, p.detail) : null),
      el("td", { "data-label": "Size" }, bytes(p.size)),
      el("td", { "data-label": "Verified" }, when(p.verified_at)))));
    const quarantined = plugins.quarantined || [];
    fill($("quarantine"), quarantined.length ? quarantined.map((q) => el("li", {},
      badge("quarantined", "bad"), " ", el("code", {}, q.original), " " + bytes(q.size) + ", since " + when(q.quarantined_at),
      el("div", { class: "muted small" }, q.path))) : [el("li", { class: "muted" }, "empty")]);
  }

  // Newest first; a run of the same event with the same detail is shown once, with its count.
  function renderErrors(problems) {
    const runs = [];
    for (const p of problems) {
      const last = runs[runs.length - 1];
      if (last && last.event === p.event && last.detail === p.detail && last.level === p.level) last.count += 1;
      else runs.push({ ...p, count: 1, first: p.at });
    }
    fill($("errors"), runs.length ? runs.map((p) => el("li", {},
      badge(p.level, p.level === "warning" ? "warn" : "bad"), " ", el("strong", {}, when(p.at)), " " + p.event,
      p.count > 1 ? el("span", { class: "muted" }, " (" + p.count + " times since " + when(p.first) + ")") : null,
      p.detail ? el("div", { class: "muted small" }, p.detail) : null)) : [el("li", { class: "muted" }, "none since this node started")]);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
