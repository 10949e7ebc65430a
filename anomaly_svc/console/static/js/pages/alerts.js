// Live alerts: new and escalated anomalies as they are raised, resuming after a reconnect.
import { liveStream } from "../api.js";
import { clear, formatTime, h, pill, severityBadge } from "../dom.js";

const received = [];
let lastAlertId = "";
const MAX_SHOWN = 200;

function card(alert) {
  const { anomaly } = alert;
  return h("li", { class: `alert alert-${alert.kind}`, "data-alert-id": alert.alert_id },
    h("div", { class: "alert-head" },
      pill(alert.kind === "escalated" ? "escalated" : "new", alert.kind), " ",
      severityBadge(anomaly.severity), " ",
      h("strong", { text: `${anomaly.agent} · ${anomaly.type}` }), " ",
      h("span", { class: "muted", text: `${anomaly.host} · ${formatTime(alert.time)}` })),
    h("a", { href: `#/anomalies/${encodeURIComponent(anomaly.id)}`, text: anomaly.description }),
    anomaly.count > 1 ? h("span", { class: "muted", text: ` (seen ${anomaly.count} times)` }) : null);
}

export async function render(view) {
  const state = h("span", { id: "alerts-state", class: "pill" });
  const list = h("ul", { id: "alert-list", class: "alerts" });
  const empty = h("p", { class: "empty", id: "alerts-empty", text: "Waiting for alerts… new and escalated anomalies appear here without a reload." });
  const show = () => {
    clear(list).append(...received.map(card));
    empty.hidden = received.length > 0;
  };
  view.append(h("h1", {}, "Live alerts ", state), empty, list);
  show();
  const url = `/api/alerts/stream${lastAlertId ? `?after=${encodeURIComponent(lastAlertId)}` : ""}`;
  return liveStream(url, {
    alert: (alert, id) => {
      lastAlertId = id || alert.alert_id;
      received.unshift(alert);
      received.length = Math.min(received.length, MAX_SHOWN);
      show();
    },
  }, state);
}
