// Small SVG charts drawn here (no library): lines over time, bars over time, horizontal bars.
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const WIDTH = 600;
const HEIGHT = 220;
const PAD = { left: 52, right: 12, top: 12, bottom: 28 };

function node(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function frame(label) {
  return node("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart-svg", role: "img", "aria-label": label, preserveAspectRatio: "xMidYMid meet" });
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function axes(svg, yMax, unit, xStart, xEnd) {
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = PAD.top + plotHeight * (1 - fraction);
    svg.append(node("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y, class: "grid" }));
    const value = yMax * fraction;
    svg.append(node("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "axis" },
      `${Number.isInteger(value) ? value : value.toPrecision(2)}${unit}`));
  }
  svg.append(node("text", { x: PAD.left, y: HEIGHT - 8, class: "axis" }, clock(xStart)));
  svg.append(node("text", { x: WIDTH - PAD.right, y: HEIGHT - 8, "text-anchor": "end", class: "axis" }, clock(xEnd)));
}

function emptyNote(svg, text) {
  svg.append(node("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty-note" }, text));
  return svg;
}

// series: {lineName: [[unixSeconds, value], ...]}
export function lineChart(series, { unit = "" } = {}) {
  const names = Object.keys(series);
  const points = names.flatMap((name) => series[name]);
  const wrapper = document.createElement("div");
  const svg = frame(`chart of ${names.join(", ") || "nothing yet"}`);
  wrapper.append(svg);
  if (points.length < 1) {
    emptyNote(svg, "No data yet — points appear as samples are taken.");
    return wrapper;
  }
  const xs = points.map((p) => p[0]);
  const xStart = Math.min(...xs);
  const xEnd = Math.max(...xs, xStart + 1);
  const yMax = niceMax(Math.max(...points.map((p) => p[1])));
  axes(svg, yMax, unit, xStart, xEnd);
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const legend = document.createElement("ul");
  legend.className = "legend";
  names.forEach((name, index) => {
    const color = COLORS[index % COLORS.length];
    const coordinates = series[name].map(([x, y]) =>
      `${(PAD.left + ((x - xStart) / (xEnd - xStart)) * plotWidth).toFixed(1)},${(PAD.top + plotHeight * (1 - y / yMax)).toFixed(1)}`);
    svg.append(node("polyline", { points: coordinates.join(" "), fill: "none", stroke: color, "stroke-width": 2, class: "series", "data-series": name }));
    if (coordinates.length === 1) {
      const [cx, cy] = coordinates[0].split(",");
      svg.append(node("circle", { cx, cy, r: 3, fill: color }));
    }
    const last = series[name][series[name].length - 1];
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = color;
    item.append(swatch, `${name}: ${Number(last[1]).toPrecision(3)}${unit}`);
    legend.append(item);
  });
  wrapper.append(legend);
  return wrapper;
}

// counts: [[bucketStartSeconds, count], ...]
export function barChart(counts, bucketSeconds) {
  const svg = frame("anomalies per time bucket");
  const total = counts.reduce((sum, [, count]) => sum + count, 0);
  if (!counts.length) return emptyNote(svg, "No data.");
  const start = counts[0][0];
  const end = counts[counts.length - 1][0] + bucketSeconds;
  const yMax = niceMax(Math.max(...counts.map((c) => c[1])));
  axes(svg, yMax, "", start, end);
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const width = plotWidth / counts.length;
  counts.forEach(([at, count], index) => {
    if (!count) return;
    const height = (count / yMax) * plotHeight;
    const bar = node("rect", {
      x: (PAD.left + index * width + 1).toFixed(1), y: (PAD.top + plotHeight - height).toFixed(1),
      width: Math.max(1, width - 2).toFixed(1), height: height.toFixed(1), class: "bar", "data-count": count,
    });
    bar.append(node("title", {}, `${count} from ${new Date(at * 1000).toLocaleString()}`));
    svg.append(bar);
  });
  if (!total) emptyNote(svg, "No anomalies in this period.");
  return svg;
}

// values: {name: number}, drawn largest magnitude first.
export function horizontalBars(values) {
  const entries = Object.entries(values).slice(0, 15);
  const rowHeight = 22;
  const labelWidth = 220;
  const height = entries.length * rowHeight + 8;
  const svg = node("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart-svg features", role: "img", "aria-label": "features that drove the score" });
  const largest = Math.max(...entries.map(([, v]) => Math.abs(v)), 1e-9);
  entries.forEach(([name, value], index) => {
    const y = 4 + index * rowHeight;
    const width = (Math.abs(value) / largest) * (WIDTH - labelWidth - 80);
    svg.append(node("text", { x: labelWidth - 8, y: y + 15, "text-anchor": "end", class: "axis" }, name));
    svg.append(node("rect", { x: labelWidth, y: y + 3, width: Math.max(1, width).toFixed(1), height: rowHeight - 8, class: value < 0 ? "bar negative" : "bar" }));
    svg.append(node("text", { x: labelWidth + width + 6, y: y + 15, class: "axis" }, Number(value).toPrecision(3)));
  });
  return svg;
}
