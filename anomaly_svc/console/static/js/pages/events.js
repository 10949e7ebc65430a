// Events: search stored events with paging, and a live tail of new ones.
import { api, liveStream, query } from "../api.js";
import { clear, field, formatTime, h, inputTime, select, severityBadge } from "../dom.js";

const SEVERITIES = ["emergency", "alert", "critical", "error", "warning", "notice", "info", "debug"];
const MAX_TAILED = 500;

function eventRows(events) {
  return events.map((e) => h("tr", { "data-id": e.id },
    h("td", { text: formatTime(e.time) }), h("td", {}, severityBadge(e.severity)),
    h("td", { text: e.host }), h("td", { text: e.service }),
    h("td", { class: "wrap mono", text: e.message }),
    h("td", { class: "wrap", text: Object.entries(e.tags).map(([k, v]) => `${k}=${v}`).join(", ") })));
}

function eventTable(id, body) {
  return h("div", { class: "table-scroll" }, h("table", { class: "list", id },
    h("thead", {}, h("tr", {}, ["Time", "Severity", "Host", "Service", "Message", "Tags"].map((t) => h("th", { text: t })))),
    body));
}

export async function render(view, ui) {
  const inputs = {
    start: h("input", { id: "events-start", type: "datetime-local" }),
    end: h("input", { id: "events-end", type: "datetime-local" }),
    host: h("input", { id: "events-host", type: "text", placeholder: "host" }),
    service: h("input", { id: "events-service", type: "text", placeholder: "service" }),
    severity: select("events-severity", [["", "any"], ...SEVERITIES.map((s) => [s, `${s} or worse`])]),
    text: h("input", { id: "events-text", type: "search", placeholder: "text in the message" }),
    tags: h("input", { id: "events-tags", type: "text", placeholder: "key=value, …" }),
  };
  const results = h("div", { id: "event-results" });
  const tailState = h("span", { id: "tail-state", class: "pill", text: "off" });
  const tailBody = h("tbody");
  const tailButton = h("button", { type: "button", id: "tail-toggle", text: "Start live tail" });
  const tokens = [""];
  let position = 0;
  let stopTail = null;

  const filters = () => ({
    host: inputs.host.value.trim(), service: inputs.service.value.trim(), severity: inputs.severity.value,
    text: inputs.text.value.trim(), tags: inputs.tags.value.trim(),
  });

  async function search() {
    ui.clearError();
    try {
      const page = await api("GET", `/api/events${query({
        ...filters(), start: inputTime(inputs.start), end: inputTime(inputs.end), page_token: tokens[position],
      })}`);
      tokens[position + 1] = page.next_page_token;
      clear(results).append(
        page.events.length ? eventTable("event-table", h("tbody", {}, eventRows(page.events))) : h("p", { class: "empty", text: "No stored events match." }),
        h("div", { class: "paging" },
          h("button", { type: "button", id: "events-newer", disabled: position === 0, onclick: () => { position -= 1; search(); }, text: "‹ Newer" }),
          h("span", { class: "muted", text: `page ${position + 1}` }),
          h("button", { type: "button", id: "events-older", disabled: !page.next_page_token, onclick: () => { position += 1; search(); }, text: "Older ›" })));
    } catch (error) {
      ui.showError(error);
    }
  }

  tailButton.addEventListener("click", () => {
    if (stopTail) {
      stopTail();
      stopTail = null;
      tailButton.textContent = "Start live tail";
      tailState.className = "pill";
      tailState.textContent = "off";
      return;
    }
    tailButton.textContent = "Stop live tail";
    stopTail = liveStream(`/api/events/tail${query(filters())}`, {
      events: (events) => {
        tailBody.prepend(...eventRows(events.slice().reverse()));
        while (tailBody.children.length > MAX_TAILED) tailBody.lastChild.remove();
      },
    }, tailState);
  });

  const form = h("form", { class: "filters", id: "event-filters", onsubmit: (event) => {
    event.preventDefault();
    tokens.length = 1;
    position = 0;
    search();
  } },
  field("From", inputs.start), field("To", inputs.end), field("Host", inputs.host),
  field("Service", inputs.service), field("Severity", inputs.severity), field("Text", inputs.text),
  field("Tags", inputs.tags), h("button", { type: "submit", id: "events-search", text: "Search" }));

  view.append(
    h("h1", { text: "Events" }), form, results,
    h("section", { class: "tail" },
      h("h2", {}, "Live tail ", tailState, " ", tailButton),
      h("p", { class: "hint", text: "New events matching host, service, severity, text and tags appear on top as storage commits them." }),
      eventTable("tail-table", tailBody)));
  await search();
  return () => stopTail && stopTail();
}
