// Anomalies: a filtered list, and one anomaly with its features, events and actions.
import { api, query } from "../api.js";
import { horizontalBars } from "../charts.js";
import { clear, field, formatTime, h, inputTime, pill, select, severityBadge } from "../dom.js";

const SEVERITIES = ["emergency", "alert", "critical", "error", "warning", "notice", "info", "debug"];
const filters = { agent: "", severity: "", host: "", status: "", start: "", end: "" };

export async function render(view, ui, [anomalyId]) {
  if (anomalyId) return renderDetail(view, ui, anomalyId);
  return renderList(view, ui);
}

async function renderList(view, ui) {
  const agents = await api("GET", "/api/agents").catch((error) => {
    ui.showError(error);
    return { agents: [] };
  });
  const agent = select("filter-agent", [["", "any agent"], ...agents.agents.map((a) => [a.name, a.name])], filters.agent);
  const severity = select("filter-severity", [["", "any severity"], ...SEVERITIES.map((s) => [s, `${s} or worse`])], filters.severity);
  const status = select("filter-status", [["", "any status"], ["open", "open"], ["acknowledged", "acknowledged"], ["resolved", "resolved"]], filters.status);
  const host = h("input", { id: "filter-host", type: "text", placeholder: "host", value: filters.host });
  const start = h("input", { id: "filter-start", type: "datetime-local" });
  const end = h("input", { id: "filter-end", type: "datetime-local" });
  const results = h("div", { id: "anomaly-results" });
  const tokens = [""];
  let position = 0;

  async function load() {
    Object.assign(filters, {
      agent: agent.value, severity: severity.value, status: status.value, host: host.value.trim(),
      start: inputTime(start), end: inputTime(end),
    });
    ui.clearError();
    try {
      const page = await api("GET", `/api/anomalies${query({ ...filters, page_token: tokens[position] })}`);
      tokens[position + 1] = page.next_page_token;
      showList(results, page, {
        older: page.next_page_token ? () => { position += 1; load(); } : null,
        newer: position > 0 ? () => { position -= 1; load(); } : null,
      });
    } catch (error) {
      ui.showError(error);
    }
  }

  const form = h("form", { class: "filters", id: "anomaly-filters", onsubmit: (event) => {
    event.preventDefault();
    tokens.length = 1;
    position = 0;
    load();
  } },
  field("Agent", agent), field("Severity", severity), field("Host", host), field("Status", status),
  field("From", start), field("To", end), h("button", { type: "submit", text: "Apply" }));
  view.append(h("h1", { text: "Anomalies" }), form, results);
  await load();
  return null;
}

function showList(results, page, paging) {
  clear(results);
  if (!page.anomalies.length) {
    results.append(h("p", { class: "empty", text: "No anomalies match these filters." }));
    return;
  }
  const rows = page.anomalies.map((a) =>
    h("tr", { class: "clickable", "data-id": a.id, onclick: () => { window.location.hash = `#/anomalies/${encodeURIComponent(a.id)}`; } },
      h("td", { text: formatTime(a.time) }),
      h("td", {}, severityBadge(a.severity)),
      h("td", { text: a.agent }),
      h("td", { text: a.type }),
      h("td", { text: a.host }),
      h("td", { class: "wrap" }, h("a", { href: `#/anomalies/${encodeURIComponent(a.id)}`, text: a.description })),
      h("td", {}, pill(a.status, a.status)),
      h("td", { text: a.label === "none" ? "" : a.label.replace("_", " ") }),
      h("td", { class: "number", text: a.count })));
  results.append(
    h("div", { class: "table-scroll" }, h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Time", "Severity", "Agent", "Type", "Host", "Description", "Status", "Label", "Count"].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows))),
    h("div", { class: "paging" },
      h("button", { type: "button", disabled: !paging.newer, onclick: paging.newer, text: "‹ Newer" }),
      h("button", { type: "button", disabled: !paging.older, onclick: paging.older, text: "Older ›" })));
}

async function renderDetail(view, ui, anomalyId) {
  const container = h("div", { id: "anomaly-detail" });
  view.append(h("p", {}, h("a", { href: "#/anomalies", text: "‹ All anomalies" })), container);
  const reload = async () => {
    try {
      showDetail(container, await api("GET", `/api/anomalies/${encodeURIComponent(anomalyId)}`), ui, reload);
    } catch (error) {
      ui.showError(error);
    }
  };
  await reload();
  return null;
}

function facts(anomaly) {
  const rows = [
    ["Agent", anomaly.agent], ["Host", anomaly.host], ["Type", anomaly.type],
    ["Confidence", `${Math.round(anomaly.confidence * 100)} %`], ["Occurrences", anomaly.count],
    ["First seen", formatTime(anomaly.first_seen)], ["Last seen", formatTime(anomaly.last_seen)],
    ["Model version", anomaly.model_version || "rules (no model)"], ["Dedupe key", anomaly.dedupe_key],
    ["Resolution", anomaly.resolution || "—"], ["Notes", anomaly.notes || "—"],
  ];
  return h("dl", { class: "facts" }, rows.map(([name, value]) => [h("dt", { text: name }), h("dd", { text: value, "data-fact": name })]));
}

function actions(anomaly, ui, reload) {
  const notes = h("textarea", { id: "action-notes", rows: 3, placeholder: "Notes for the record" });
  const resolution = select("action-resolution", [["fixed", "fixed"], ["expected", "expected behaviour"], ["duplicate", "duplicate"], ["wont_fix", "won't fix"]]);
  const act = (body) => async () => {
    ui.clearError();
    try {
      await api("POST", `/api/anomalies/${encodeURIComponent(anomaly.id)}`, { ...body, notes: notes.value });
      await reload();
    } catch (error) {
      ui.showError(error);
    }
  };
  return h("section", { class: "actions", "aria-label": "Actions" },
    h("h2", { text: "Actions" }),
    field("Notes", notes),
    h("div", { class: "buttons" },
      h("button", { type: "button", id: "do-acknowledge", disabled: anomaly.status !== "open", onclick: act({ action: "acknowledge" }), text: "Acknowledge" }),
      field("Resolution", resolution),
      h("button", { type: "button", id: "do-resolve", disabled: anomaly.status === "resolved", onclick: () => act({ action: "resolve", resolution: resolution.value })(), text: "Resolve" }),
      h("button", { type: "button", id: "do-reopen", disabled: anomaly.status === "open", onclick: act({ action: "reopen" }), text: "Reopen" })),
    h("div", { class: "buttons" },
      h("button", { type: "button", id: "label-true", class: anomaly.label === "true_positive" ? "chosen" : "", onclick: act({ action: "label", label: "true_positive" }), text: "True positive" }),
      h("button", { type: "button", id: "label-false", class: anomaly.label === "false_positive" ? "chosen" : "", onclick: act({ action: "label", label: "false_positive" }), text: "False positive" })));
}

function eventsAround(data) {
  if (data.events_error) return h("p", { class: "error", text: data.events_error });
  if (!data.events.length) return h("p", { class: "empty", text: "Storage holds no events around this anomaly." });
  return h("div", { class: "table-scroll" }, h("table", { class: "list", id: "context-events" },
    h("thead", {}, h("tr", {}, ["Time", "Severity", "Service", "Message"].map((t) => h("th", { text: t })))),
    h("tbody", {}, data.events.map((e) => h("tr", { class: e.in_anomaly ? "in-anomaly" : "" },
      h("td", { text: formatTime(e.time) }), h("td", {}, severityBadge(e.severity)),
      h("td", { text: e.service }), h("td", { class: "wrap mono", text: e.message }))))));
}

function showDetail(container, data, ui, reload) {
  const { anomaly } = data;
  clear(container).append(
    h("h1", {}, `${anomaly.type} on ${anomaly.host || "?"} `, severityBadge(anomaly.severity), " ",
      h("span", { id: "anomaly-status" }, pill(anomaly.status, anomaly.status)), " ",
      anomaly.label !== "none" ? h("span", { id: "anomaly-label" }, pill(anomaly.label.replace("_", " "), "label")) : null),
    h("p", { class: "description", text: anomaly.description }),
    h("div", { class: "columns" },
      h("section", {}, h("h2", { text: "Facts" }), facts(anomaly)),
      h("section", {}, h("h2", { text: "Features that drove the score" }),
        Object.keys(anomaly.features).length ? horizontalBars(anomaly.features) : h("p", { class: "empty", text: "No features recorded." }))),
    actions(anomaly, ui, reload),
    h("section", {}, h("h2", { text: `Events around it${data.events_truncated ? " (first page)" : ""}` }),
      h("p", { class: "hint", text: "Highlighted rows are the events the anomaly was built from." }),
      eventsAround(data)));
}
