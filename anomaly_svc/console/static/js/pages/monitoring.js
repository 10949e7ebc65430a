// Monitoring: health of every service and sink, and the mesh's numbers over time as charts.
import { api } from "../api.js";
import { barChart, lineChart } from "../charts.js";
import { clear, h } from "../dom.js";

const HEALTH_CLASS = { SERVING: "up", up: "up", degraded: "degraded", NOT_SERVING: "down", down: "down", UNREACHABLE: "down" };

function tile(name, state, detail) {
  return h("div", { class: `tile tile-${HEALTH_CLASS[state] || "unknown"}`, "data-service": name },
    h("strong", { text: name }), h("span", { text: state }), detail ? h("small", { text: detail }) : null);
}

function chartSection(id, title, series, unit) {
  return h("section", { class: "chart", id },
    h("h2", { text: title }), lineChart(series || {}, { unit }));
}

function draw(container, data) {
  const series = data.series || {};
  clear(container).append(
    h("section", {}, h("h2", { text: "Services" }), h("div", { class: "tiles", id: "service-tiles" },
      Object.entries(data.health).map(([name, state]) => tile(name, state)))),
    h("section", {}, h("h2", { text: "Sinks" }), h("div", { class: "tiles", id: "sink-tiles" },
      data.sinks.length ? data.sinks.map((s) => tile(`${s.name}${s.primary ? " (primary)" : ""}`, s.health,
        `${s.outbox_depth} waiting · lag ${s.outbox_lag_s.toFixed(1)} s${s.last_error ? ` · ${s.last_error}` : ""}`)) : h("p", { class: "empty", text: "Storage reported no sinks." }))),
    h("div", { class: "charts" },
      chartSection("chart-stored", "Events stored per second", series.stored_rate, "/s"),
      chartSection("chart-ingest", "Ingest rate (events/s)", series.ingest_rate, "/s"),
      chartSection("chart-ack", "Ack latency (ms)", series.ack_latency, "ms"),
      chartSection("chart-spool", "Spool depth per agent (events)", series.spool_depth, ""),
      chartSection("chart-outbox", "Outbox lag per sink (s)", series.outbox_lag, "s"),
      h("section", { class: "chart", id: "chart-anomalies" },
        h("h2", { text: "Anomalies detected over time" }), barChart(data.anomalies.counts, data.anomalies.bucket_s))));
}

export async function render(view, ui) {
  const container = h("div", { id: "monitoring" });
  view.append(h("h1", { text: "Monitoring" }), container);
  let timer = null;
  const refresh = async () => {
    try {
      const data = await api("GET", "/api/monitoring");
      draw(container, data);
      if (data.problems.length) ui.showError(new Error(data.problems.join(" ")));
      else ui.clearError();
      timer = window.setTimeout(refresh, Math.max(1000, data.interval_s * 1000));
    } catch (error) {
      ui.showError(error);
      timer = window.setTimeout(refresh, 5000);
    }
  };
  await refresh();
  return () => window.clearTimeout(timer);
}
