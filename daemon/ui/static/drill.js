// One drill's report: its figures, a timeline drawn from its moments and the nodes' roles, the text.
"use strict";

(() => {
  const { api, Refused, el, svg, fill, number, seconds, when, badge } = HS;
  const $ = (id) => document.getElementById(id);
  const ROLE_TONES = { primary: "#15803d", leader: "#15803d", replica: "#1f6fb2", down: "#a40e26" };

  async function start() {
    const id = new URLSearchParams(location.search).get("id");
    if (!id) {
      $("drill-error").textContent = "No drill named in the address.";
      return;
    }
    try {
      show(await api("/ui/api/drills/" + encodeURIComponent(id)));
    } catch (error) {
      $("drill-error").textContent = error instanceof Refused
        ? "Sign in on the status page first (the key is kept per browser tab)."
        : "Could not load the drill: " + error.message;
    }
  }

  function show(drill) {
    const passed = drill.result === "pass";
    $("drill-title").textContent = "Failover drill " + when(drill.started_at);
    const verdict = $("drill-verdict");
    verdict.hidden = false;
    verdict.className = "verdict " + (passed ? "good" : "bad");
    fill(verdict, [badge(passed ? "PASS" : String(drill.result).toUpperCase(), passed ? "good" : "bad"), " " + (drill.reason || "")]);
    fill($("figures").tBodies[0], (drill.phases || []).map((p) => {
      const failed = p.failed_requests || {};
      const cell = (label, text) => el("td", { "data-label": label }, text);
      return el("tr", {},
        el("th", { scope: "row", "data-label": "Phase" }, p.name),
        cell("From", p.from), cell("To", p.to || "-"),
        cell("Switchover", seconds(p.switchover_seconds)),
        cell("HAProxy noticed", seconds(p.haproxy_detection_seconds)),
        cell("Promotion", seconds(p.promotion_seconds)),
        cell("Rejoin", seconds(p.rejoin_seconds)),
        cell("Writes lost", number(p.lost_writes)),
        cell("Requests failed", number((failed.writes || 0) + (failed.reads || 0))));
    }));
    drawTimeline(drill.timeline || {});
    $("report").textContent = drill.report_md || "(no report text was recorded)";
  }

  function drawTimeline(timeline) {
    const nodes = timeline.nodes || [];
    const phases = timeline.phases || [];
    const moments = [];
    phases.forEach((phase) => {
      for (const [name, at] of Object.entries(phase.moments || {})) {
        if (at !== null && at !== undefined) moments.push({ phase: phase.name, name, at, stop: (phase.moments || {}).stop_issued });
      }
    });
    moments.sort((a, b) => a.at - b.at);
    const end = Math.max(timeline.finished || 0, ...moments.map((m) => m.at), 1);
    const width = Math.max(360, Math.round($("timeline").clientWidth || 720));
    const rowHeight = 26;
    const pad = { left: Math.min(170, width / 3), right: 10, top: 10 };
    const height = pad.top + rowHeight * Math.max(1, nodes.length) + 40;
    const x = (t) => pad.left + (t / end) * (width - pad.left - pad.right);
    const parts = [svg("title", { id: "timeline-svg-title" }, "Each node's role over the drill, with its moments")];
    nodes.forEach((url, i) => {
      const top = pad.top + i * rowHeight;
      parts.push(svg("text", { x: 4, y: top + 16, class: "axis" }, url));
      const changes = (timeline.roles || [])[i] || [];
      changes.forEach((change, j) => {
        const from = change[0];
        const to = j + 1 < changes.length ? changes[j + 1][0] : end;
        const label = String(change[1]);
        const tone = Object.entries(ROLE_TONES).find(([k]) => label.includes(k));
        parts.push(svg("rect", { x: x(from), y: top + 3, width: Math.max(1, x(to) - x(from)), height: rowHeight - 8,
          fill: tone ? tone[1] : "#8c959f", opacity: 0.35 }));
        if (x(to) - x(from) > 40) parts.push(svg("text", { x: x(from) + 3, y: top + 16, class: "axis" }, label));
      });
    });
    const axisY = pad.top + rowHeight * Math.max(1, nodes.length) + 4;
    moments.forEach((m, i) => {
      parts.push(svg("line", { x1: x(m.at), x2: x(m.at), y1: pad.top, y2: axisY, class: "bound" }));
      parts.push(svg("text", { x: x(m.at), y: axisY + 12 + (i % 2) * 11, class: "axis", "text-anchor": "middle" }, String(i + 1)));
    });
    parts.push(svg("text", { x: pad.left, y: height - 2, class: "axis" }, "0 s"));
    parts.push(svg("text", { x: width - pad.right, y: height - 2, class: "axis", "text-anchor": "end" }, end.toFixed(1) + " s"));
    const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, width, height, role: "img", "aria-labelledby": "timeline-svg-title" }, parts);
    fill($("timeline"), [chart]);
    fill($("moments").tBodies[0], moments.map((m, i) => el("tr", {},
      el("th", { scope: "row", "data-label": "Phase" }, (i + 1) + ". " + m.phase),
      el("td", { "data-label": "Moment" }, m.name.replaceAll("_", " ")),
      el("td", { "data-label": "At" }, seconds(m.at)),
      el("td", { "data-label": "After the stop" }, m.stop === undefined || m.stop === null ? "-" : (m.at - m.stop).toFixed(2) + " s"))));
  }

  document.addEventListener("DOMContentLoaded", start);
})();
