// The login page: a token, or the operator certificate the browser presented.
const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const certificate = document.getElementById("certificate-login");

function show(message) {
  error.textContent = message;
  error.hidden = false;
}

async function logIn(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    show(data.error || `Login failed (${response.status}).`);
    return;
  }
  window.location.assign("/");
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  error.hidden = true;
  logIn("/api/login", { token: document.getElementById("token").value }).catch(() =>
    show("The console cannot be reached — check the anomaly service."),
  );
});

certificate.addEventListener("click", () => logIn("/api/login/certificate", {}));

fetch("/api/login/options", { credentials: "same-origin" })
  .then((response) => response.json())
  .then((options) => {
    certificate.hidden = !options.certificate;
    form.hidden = !options.token;
  })
  .catch(() => {});
