// Exports: create one, watch its progress, download its parts, delete it.
import { api } from "../api.js";
import { bytes, clear, field, formatTime, h, inputTime, pill, select } from "../dom.js";

const DATASETS = [["events", "Events"], ["anomalies", "Anomalies"], ["labels", "Operator labels"]];

function progressBar(exportItem) {
  const percent = Math.round(exportItem.progress * 100);
  const bar = h("div", { class: "bar" });
  bar.style.width = `${percent}%`;
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent, "aria-label": `export ${exportItem.id}` },
    bar, h("span", { text: `${percent} %` }));
}

function exportCard(item, remove) {
  return h("li", { class: "card export", "data-export-id": item.id, "data-state": item.state },
    h("div", { class: "alert-head" }, h("strong", { class: "mono", text: item.id }), " ",
      pill(item.state, item.state), " ",
      h("span", { class: "muted", text: `${item.datasets.join(", ")} · ${item.format}${item.gzip ? " + gzip" : ""} · created ${formatTime(item.created)}` })),
    progressBar(item),
    h("p", { class: "muted", text: `${item.rows} rows · ${bytes(item.bytes)} · range ${formatTime(item.start)} – ${formatTime(item.end)}` }),
    item.error ? h("p", { class: "error", text: item.error }) : null,
    item.parts.length ? h("ul", { class: "parts" }, item.parts.map((part) => h("li", {},
      h("a", { href: `/api/exports/${encodeURIComponent(item.id)}/parts/${part.index}`, download: part.name, class: "download", text: `Download ${part.name}` }),
      h("span", { class: "muted", text: ` ${part.rows} rows · ${bytes(part.bytes)}` })))) : null,
    h("button", { type: "button", class: "delete", onclick: () => remove(item), text: "Delete" }));
}

export async function render(view, ui) {
  const checks = DATASETS.map(([value, label]) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "dataset", value, checked: value === "events" }), ` ${label}`));
  const start = h("input", { id: "export-start", type: "datetime-local" });
  const end = h("input", { id: "export-end", type: "datetime-local" });
  const format = select("export-format", [["jsonl", "JSON Lines"], ["csv", "CSV"], ["parquet", "Parquet"]]);
  const compression = select("export-compression", [["none", "none"], ["gzip", "gzip"]]);
  const list = h("ul", { id: "export-list", class: "exports" });
  let timer = null;
  let gone = false;

  const remove = async (item) => {
    if (!window.confirm(`Delete export ${item.id} and its files?`)) return;
    try {
      await api("DELETE", `/api/exports/${encodeURIComponent(item.id)}`);
      await load();
    } catch (error) {
      ui.showError(error);
    }
  };

  async function load() {
    window.clearTimeout(timer);
    try {
      const data = await api("GET", "/api/exports");
      clear(list).append(...data.exports.map((item) => exportCard(item, remove)));
      if (!data.exports.length) list.append(h("li", { class: "empty", text: "No exports yet." }));
      const busy = data.exports.some((e) => e.state === "pending" || e.state === "running");
      if (busy && !gone) timer = window.setTimeout(load, 1000);
    } catch (error) {
      ui.showError(error);
    }
  }

  const form = h("form", { class: "filters", id: "export-form", onsubmit: async (event) => {
    event.preventDefault();
    ui.clearError();
    const datasets = checks.map((c) => c.firstChild).filter((c) => c.checked).map((c) => c.value);
    try {
      await api("POST", "/api/exports", {
        datasets, start: inputTime(start), end: inputTime(end), format: format.value, compression: compression.value,
      });
      await load();
    } catch (error) {
      ui.showError(error);
    }
  } },
  h("fieldset", {}, h("legend", { text: "What" }), checks),
  field("From", start), field("To", end), field("Format", format), field("Compression", compression),
  h("button", { type: "submit", id: "export-create", text: "Create export" }));

  view.append(h("h1", { text: "Exports" }), form, list);
  await load();
  return () => {
    gone = true;
    window.clearTimeout(timer);
  };
}
