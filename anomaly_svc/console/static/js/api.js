// The console's JSON API: session, CSRF token on every change, errors as messages.

let csrfToken = null;

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function toLogin() {
  window.location.assign("/login");
  return new Promise(() => {});
}

export async function loadSession() {
  const response = await fetch("/api/session", { credentials: "same-origin" });
  if (response.status === 401) return toLogin();
  const session = await response.json();
  csrfToken = session.csrf;
  return session;
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const options = { method, credentials: "same-origin", headers };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new ApiError("The console cannot be reached — check the anomaly service; retrying.", 0);
  }
  if (response.status === 401) return toLogin();
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(data.error || `Request failed (${response.status}).`, response.status);
  return data;
}

export function query(parameters) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== "" && value !== null && value !== undefined) search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// A Server-Sent Events view whose connection state is shown in `stateElement`.
export function liveStream(url, handlers, stateElement) {
  const source = new EventSource(url, { withCredentials: true });
  const setState = (state, text) => {
    stateElement.className = `pill pill-${state}`;
    stateElement.textContent = text;
    stateElement.dataset.state = state;
  };
  setState("connecting", "Connecting…");
  source.addEventListener("state", () => setState("live", "Live"));
  source.addEventListener("problem", (event) => {
    const { message } = JSON.parse(event.data);
    setState("reconnecting", message);
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) setState("offline", "Disconnected — reload the page.");
    else setState("reconnecting", "Reconnecting…");
  };
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handler(JSON.parse(event.data), event.lastEventId));
  }
  return () => source.close();
}
