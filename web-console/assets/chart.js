// Coverage over time, hand-written SVG: installed ÷ targeted per sample, stage changes marked.
// The SVG scales to its container (viewBox); `data-points` says how many samples were drawn.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
  if (text != null) el.textContent = text;
  return el;
}

const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/**
 * samples: [{at_ms, stage, targeted, installed}] oldest first.
 * Returns <svg role="img" aria-label="Coverage over time" data-points="N">.
 */
export function coverageChart(samples, { width = 720, height = 240 } = {}) {
  const pad = { left: 46, right: 16, top: 14, bottom: 30 };
  const w = width - pad.left - pad.right;
  const hgt = height - pad.top - pad.bottom;
  const svg = s("svg", {
    role: "img", "aria-label": "Coverage over time", "data-points": samples.length,
    viewBox: `0 0 ${width} ${height}`, class: "chart", preserveAspectRatio: "xMidYMid meet",
  });
  const last = samples[samples.length - 1];
  const desc = samples.length
    ? `${samples.length} samples from ${clock(samples[0].at_ms)} to ${clock(last.at_ms)}; ` +
      `latest ${last.installed} of ${last.targeted} targeted devices installed (stage ${last.stage + 1}).`
    : "No coverage samples yet.";
  svg.append(s("title", {}, "Coverage over time"), s("desc", {}, desc));

  // Grid and y axis: 0, 25, 50, 75, 100 %.
  const y = (share) => pad.top + hgt - share * hgt;
  for (const share of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(s("line", { x1: pad.left, x2: pad.left + w, y1: y(share), y2: y(share), class: "grid" }));
    svg.append(s("text", { x: pad.left - 6, y: y(share) + 4, "text-anchor": "end", class: "tick" }, `${share * 100}%`));
  }
  if (!samples.length) {
    svg.append(s("text", { x: pad.left + w / 2, y: pad.top + hgt / 2, "text-anchor": "middle", class: "tick" },
      "No samples yet"));
    return svg;
  }
  const t0 = samples[0].at_ms;
  const span = Math.max(1, last.at_ms - t0);
  const x = (ms) => pad.left + (samples.length === 1 ? w / 2 : ((ms - t0) / span) * w);
  const share = (p) => (p.targeted > 0 ? Math.min(1, p.installed / p.targeted) : 0);

  // Stage changes: a dashed vertical line labelled with the new stage.
  let stage = samples[0].stage;
  for (const p of samples) {
    if (p.stage !== stage) {
      stage = p.stage;
      svg.append(s("line", { x1: x(p.at_ms), x2: x(p.at_ms), y1: pad.top, y2: pad.top + hgt, class: "stage-line" }));
      svg.append(s("text", { x: x(p.at_ms) + 4, y: pad.top + 10, class: "tick" }, `stage ${p.stage + 1}`));
    }
  }

  const pts = samples.map((p) => `${x(p.at_ms).toFixed(1)},${y(share(p)).toFixed(1)}`);
  if (samples.length > 1) {
    svg.append(s("path", {
      d: `M${x(t0)},${y(0)} L${pts.join(" L")} L${x(last.at_ms)},${y(0)} Z`, class: "area",
    }));
    svg.append(s("polyline", { points: pts.join(" "), class: "line" }));
  }
  // The latest point, emphasised.
  svg.append(s("circle", { cx: x(last.at_ms), cy: y(share(last)), r: 4, class: "dot" }));

  // x axis: first and last sample times.
  svg.append(s("text", { x: pad.left, y: height - 8, class: "tick" }, clock(t0)));
  svg.append(s("text", { x: pad.left + w, y: height - 8, "text-anchor": "end", class: "tick" }, clock(last.at_ms)));
  return svg;
}
