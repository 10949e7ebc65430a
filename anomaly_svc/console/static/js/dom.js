// Building DOM nodes from data: text always goes in as text, never as HTML.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "value") element.value = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(element) {
  while (element.firstChild) element.firstChild.remove();
  return element;
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

// A datetime-local input's value as an ISO time in UTC ("" when empty).
export function inputTime(input) {
  return input.value ? new Date(input.value).toISOString() : "";
}

export function severityBadge(severity) {
  return h("span", { class: `badge severity-${severity || "none"}`, text: severity || "—" });
}

export function pill(text, kind) {
  return h("span", { class: `pill pill-${kind}`, text });
}

export function field(label, control) {
  const id = control.id || `f-${Math.random().toString(36).slice(2)}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id, text: label }), control);
}

export function select(id, options, value = "") {
  return h(
    "select", { id, name: id },
    options.map(([optionValue, text]) =>
      h("option", { value: optionValue, selected: optionValue === value, text })),
  );
}

export function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = Number(count);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}
