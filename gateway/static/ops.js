// The live operations page: follows /ops/events (server-sent events) and redraws.
"use strict";

(function () {
  const page = { ticks: 0, points: [], drawn: {}, state: null, windowS: 600 };
  window.opsPage = page;
  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));

  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 90) return s.toFixed(1) + " s";
    if (s < 5400) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function merge(points) {
    const last = page.points.length ? page.points[page.points.length - 1].t : 0;
    for (const p of points) if (p.t > last) page.points.push(p);
    const newest = page.points.length ? page.points[page.points.length - 1].t : 0;
    page.points = page.points.filter((p) => newest - p.t <= page.windowS);
  }

  function render(state) {
    const cur = state.current || {};
    const badge = $("health");
    badge.textContent = state.healthy ? "HEALTHY" : "UNHEALTHY";
    badge.className = "badge " + (state.healthy ? "healthy" : "unhealthy");
    const list = $("problems");
    list.replaceChildren();
    for (const text of state.problems || []) {
      const li = document.createElement("li");
      li.textContent = text;
      list.appendChild(li);
    }
    for (const text of state.notes || []) {
      const li = document.createElement("li");
      li.className = "note";
      li.textContent = text;
      list.appendChild(li);
    }
    $("backlog").textContent = fmt(cur.backlog);
    $("oldest-age").textContent = cur.backlog ? duration(cur.oldest_age_s) : "none";
    $("intake-rate").textContent = cur.intake_per_s === null || cur.intake_per_s === undefined ? "–" : fmt(cur.intake_per_s) + "/s";
    $("drain-rate").textContent = cur.drain_per_s === null || cur.drain_per_s === undefined ? "–" : fmt(cur.drain_per_s) + "/s";
    $("eta").textContent = cur.backlog === 0 ? "drained" : cur.time_to_drain_s === null || cur.time_to_drain_s === undefined ? "not draining" : duration(cur.time_to_drain_s);
    $("writers").textContent = fmt(cur.writers_alive);
    const dead = state.dead_letters || {};
    $("dead-held").textContent = fmt(dead.held);
    const body = $("dead-reasons");
    body.replaceChildren();
    for (const [reason, count] of dead.top || []) {
      const tr = document.createElement("tr");
      const a = document.createElement("td");
      a.textContent = reason;
      const b = document.createElement("td");
      b.textContent = fmt(count);
      tr.append(a, b);
      body.appendChild(tr);
    }
    if (!(dead.top || []).length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 2;
      td.className = "empty";
      td.textContent = dead.held === null || dead.held === undefined ? "database unavailable" : "none";
      tr.appendChild(td);
      body.appendChild(tr);
    }
    draw(state);
    $("updated").textContent = "Updated " + new Date().toISOString().substring(11, 19) + " UTC.";
  }

  function draw(state) {
    const pts = page.points;
    const line = (key) => pts.map((p) => [p.t, p[key]]);
    const C = window.OpsCharts;
    // Until ten minutes of history exist, show what there is (at least two minutes).
    const span = pts.length ? pts[pts.length - 1].t - pts[0].t : 0;
    const windowS = Math.min(page.windowS, Math.max(120, span));
    page.drawn.backlog = C.drawChart($("chart-backlog"), {
      windowS, unit: "",
      series: [{ label: "backlog", color: "#2f6fd0", fill: "rgba(47,111,208,.15)", points: line("backlog") }],
    });
    page.drawn.rates = C.drawChart($("chart-rates"), {
      windowS, unit: "",
      series: [
        { label: "intake/s", color: "#d68910", points: line("intake_rate") },
        { label: "drain/s", color: "#1e8e4e", points: line("drain_rate") },
      ],
    });
    const mark = state.current && state.current.oldest_age_mark_s;
    page.drawn.age = C.drawChart($("chart-age"), {
      windowS, unit: "s",
      series: [{ label: "oldest age", color: "#8e44ad", points: line("oldest_age_s") }],
      threshold: mark ? { value: mark, label: "alert mark" } : null,
    });
  }

  function connect() {
    const source = new EventSource("/ops/events");
    source.addEventListener("state", (e) => {
      const state = JSON.parse(e.data);
      page.windowS = state.window_s || page.windowS;
      page.points = [];
      merge(state.series || []);
      page.state = state;
      $("live").className = "live on";
      $("live").textContent = "live";
      render(state);
    });
    source.addEventListener("tick", (e) => {
      const state = JSON.parse(e.data);
      merge(state.series || []);
      page.state = state;
      page.ticks += 1;
      render(state);
    });
    source.onerror = () => {
      $("live").className = "live off";
      $("live").textContent = "reconnecting…";
      // A session that expired makes the stream fail for good: back to the sign-in page.
      fetch("/ops/api/state", { credentials: "same-origin" }).then((r) => {
        if (r.status === 401 || r.status === 403) window.location.assign("/ops/login");
      }).catch(() => {});
    };
  }

  window.addEventListener("resize", () => page.state && draw(page.state));
  connect();
})();
