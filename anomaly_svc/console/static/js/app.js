// The console shell: session, navigation between pages (hash routes), the message banner.
import { api, loadSession } from "./api.js";
import { clear } from "./dom.js";
import * as alerts from "./pages/alerts.js";
import * as anomalies from "./pages/anomalies.js";
import * as events from "./pages/events.js";
import * as exportsPage from "./pages/exports.js";
import * as models from "./pages/models.js";
import * as monitoring from "./pages/monitoring.js";

const PAGES = { anomalies, alerts, events, models, monitoring, exports: exportsPage };
const view = document.getElementById("view");
const banner = document.getElementById("banner");
let leavePage = null;

export function showError(error) {
  banner.textContent = error.message || String(error);
  banner.hidden = false;
}

export function clearError() {
  banner.hidden = true;
  banner.textContent = "";
}

async function route() {
  if (leavePage) leavePage();
  leavePage = null;
  clearError();
  const [name = "anomalies", ...rest] = window.location.hash.replace(/^#\/?/, "").split("/");
  const page = PAGES[name] || anomalies;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === (PAGES[name] ? name : "anomalies"));
  }
  clear(view);
  view.dataset.page = PAGES[name] ? name : "anomalies";
  try {
    leavePage = (await page.render(view, { showError, clearError }, rest.map(decodeURIComponent))) || null;
  } catch (error) {
    showError(error);
  }
}

async function start() {
  const session = await loadSession();
  document.getElementById("operator").textContent = session.operator;
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/api/logout", {});
    window.location.assign("/login");
  });
  window.addEventListener("hashchange", route);
  await route();
}

start();
