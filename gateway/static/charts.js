// Small time-series line charts drawn on <canvas>: no library, no network.
// drawChart(canvas, {series: [{label, color, points: [[tSeconds, value], ...]}],
//                    windowS, unit, threshold: {value, label}})
"use strict";

(function (global) {
  const DURATION_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];

  function niceStep(range, ticks, unit) {
    const raw = range / Math.max(ticks, 1);
    if (unit === "s") return DURATION_STEPS.find((step) => step >= raw) || Math.ceil(raw / 3600) * 3600;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const scaled = raw / power;
    const nice = scaled <= 1 ? 1 : scaled <= 2 ? 2 : scaled <= 5 ? 5 : 10;
    return nice * power;
  }

  function formatValue(value, unit) {
    if (unit === "s") {
      const trim = (n) => String(Number(n.toFixed(1)));
      if (value >= 7200) return trim(value / 3600) + "h";
      if (value >= 120) return trim(value / 60) + "m";
      return trim(value) + "s";
    }
    if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
    if (value >= 1e3) return (value / 1e3).toFixed(1) + "k";
    return value % 1 === 0 ? String(value) : value.toFixed(1);
  }

  function clock(t) {
    const d = new Date(t * 1000);
    return d.toISOString().substring(11, 19);
  }

  function drawChart(canvas, options) {
    const ratio = global.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth || 600;
    const cssHeight = canvas.clientHeight || 200;
    if (canvas.width !== Math.round(cssWidth * ratio)) canvas.width = Math.round(cssWidth * ratio);
    if (canvas.height !== Math.round(cssHeight * ratio)) canvas.height = Math.round(cssHeight * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);

    const pad = { left: 52, right: 12, top: 26, bottom: 24 };
    const w = cssWidth - pad.left - pad.right;
    const h = cssHeight - pad.top - pad.bottom;
    const series = options.series || [];
    let tMax = 0;
    let vMax = 0;
    for (const s of series) {
      for (const [t, v] of s.points) {
        if (t > tMax) tMax = t;
        if (v > vMax) vMax = v;
      }
    }
    if (!tMax) tMax = Date.now() / 1000;
    const tMin = tMax - (options.windowS || 600);
    if (options.threshold && options.threshold.value > vMax && options.threshold.value < vMax * 3) {
      vMax = options.threshold.value;
    }
    const step = niceStep(vMax > 0 ? vMax : 1, 4, options.unit);
    const yTop = Math.max(step * Math.ceil((vMax > 0 ? vMax : 1) / step), step);
    const x = (t) => pad.left + ((t - tMin) / (tMax - tMin)) * w;
    const y = (v) => pad.top + h - (v / yTop) * h;

    // grid and y labels
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#5b6675";
    ctx.strokeStyle = "#e3e7ee";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= yTop + step / 2; v += step) {
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
      ctx.lineTo(pad.left + w, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(formatValue(v, options.unit), pad.left - 6, y(v));
    }
    // x labels: clock times at the ends and the middle
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const frac of [0, 0.5, 1]) {
      const t = tMin + frac * (tMax - tMin);
      ctx.textAlign = frac === 0 ? "left" : frac === 1 ? "right" : "center";
      ctx.fillText(clock(t) + " UTC", x(t), pad.top + h + 6);
    }
    // threshold
    if (options.threshold && options.threshold.value <= yTop) {
      ctx.save();
      ctx.setLineDash([5, 4]);
      ctx.strokeStyle = "#c0392b";
      ctx.beginPath();
      ctx.moveTo(pad.left, y(options.threshold.value));
      ctx.lineTo(pad.left + w, y(options.threshold.value));
      ctx.stroke();
      ctx.restore();
      ctx.fillStyle = "#c0392b";
      ctx.textAlign = "right";
      ctx.textBaseline = "bottom";
      ctx.fillText(options.threshold.label, pad.left + w, y(options.threshold.value) - 2);
    }
    // series
    let drawn = 0;
    for (const s of series) {
      const pts = s.points.filter(([t]) => t >= tMin);
      if (!pts.length) continue;
      if (s.fill) {
        ctx.beginPath();
        ctx.moveTo(x(pts[0][0]), y(0));
        for (const [t, v] of pts) ctx.lineTo(x(t), y(v));
        ctx.lineTo(x(pts[pts.length - 1][0]), y(0));
        ctx.closePath();
        ctx.fillStyle = s.fill;
        ctx.fill();
      }
      ctx.beginPath();
      pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.stroke();
      drawn += pts.length;
    }
    // legend
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    let lx = pad.left;
    for (const s of series) {
      ctx.fillStyle = s.color;
      ctx.fillRect(lx, 9, 14, 3);
      ctx.fillStyle = "#28313d";
      ctx.fillText(s.label, lx + 18, 11);
      lx += ctx.measureText(s.label).width + 40;
    }
    return drawn;
  }

  global.OpsCharts = { drawChart, formatValue };
})(window);
