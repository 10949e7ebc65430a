// Models: what each agent serves, with its training range, metrics and state; reload; roll back.
import { api } from "../api.js";
import { clear, formatTime, h, pill } from "../dom.js";

function metrics(model) {
  const entries = Object.entries(model.metrics);
  if (!entries.length) return h("span", { class: "muted", text: "no metrics recorded" });
  return h("dl", { class: "metrics" }, entries.map(([name, value]) => [
    h("dt", { text: name }), h("dd", { text: Number(value).toFixed(3) })]));
}

function versionRow(model) {
  return h("tr", { "data-version": model.version },
    h("td", { class: "mono", text: model.version }),
    h("td", {}, pill(model.state, model.state), model.pinned ? [" ", pill("pinned", "pinned")] : null),
    h("td", { text: formatTime(model.loaded) }),
    h("td", { text: `${formatTime(model.data_start)} – ${formatTime(model.data_end)}` }),
    h("td", {}, metrics(model)),
    h("td", { class: "wrap error-text", text: model.error }));
}

function agentCard(name, agentModels, act) {
  const serving = agentModels.find((m) => m.state === "loaded");
  return h("section", { class: "card", "data-agent": name },
    h("h2", {}, name, " ", serving ? pill(`serving ${serving.version}`, "loaded") : pill("rules only", "none"),
      serving && serving.pinned ? [" ", pill("rolled back — pinned", "pinned")] : null),
    serving ? h("p", { class: "muted", text: `threshold ${serving.threshold.toFixed(3)} · ${serving.features} features · trained on ${formatTime(serving.data_start)} – ${formatTime(serving.data_end)}` }) : null,
    h("div", { class: "buttons" },
      h("button", { type: "button", class: "reload", onclick: act("reload", { agent: name }), text: serving && serving.pinned ? "Release pin and reload" : "Reload" }),
      h("button", { type: "button", class: "rollback", disabled: !serving, onclick: act("rollback", { agent: name }), text: "Roll back to previous version" })),
    agentModels.length ? h("div", { class: "table-scroll" }, h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Version", "State", "Loaded", "Training data", "Metrics", "Error"].map((t) => h("th", { text: t })))),
      h("tbody", {}, agentModels.slice().reverse().map(versionRow)))) : h("p", { class: "empty", text: "No model folder for this agent: it detects with its rules." }));
}

export async function render(view, ui) {
  const cards = h("div", { id: "model-cards" });
  const load = async () => {
    const data = await api("GET", "/api/models");
    const names = [...new Set([...data.agents.map((a) => a.name), ...data.models.map((m) => m.agent)])];
    clear(cards).append(...names.map((name) => agentCard(name, data.models.filter((m) => m.agent === name), act)));
  };
  const act = (what, body) => async () => {
    ui.clearError();
    try {
      await api("POST", `/api/models/${what}`, body);
      await load();
    } catch (error) {
      ui.showError(error);
    }
  };
  view.append(
    h("h1", {}, "Models ", h("button", { type: "button", id: "reload-all", onclick: act("reload", {}), text: "Reload all" })),
    h("p", { class: "hint", text: "Training happens in the training environment; here you see what each agent serves, reload it, or roll back." }),
    cards);
  await load();
  return null;
}
