// Walle console: sign-in, the role-aware navigation and the hash router.
// Pages live in page-*.js; each exports `render(ctx)` and builds its part of <main>.
// ctx = {main, params, query, me, may(capability), signal, navigate(hash)}; `signal` aborts
// when the operator leaves the page (fetches and the release's live stream stop with it).

import { api, getToken, setToken, clearToken, setUnauthorizedHandler, ApiError } from "./api.js";
import { h, alertBox, field, uid } from "./ui.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const whoami = document.getElementById("whoami");
const navToggle = document.getElementById("nav-toggle");

let me = null; // {id, name, role, may}
let pageController = null;
let signInMessage = "";
let firstRender = true;

const may = (capability) => Boolean(me && me.may && me.may.includes(capability));

// Routes: [pattern, module, nav section]. `:x` captures one decoded path segment.
const ROUTES = [
  ["overview", "page-overview.js", "Overview"],
  ["releases", "page-releases.js", "Releases"],
  ["releases/new", "page-new-release.js", "New release"],
  ["releases/:id", "page-release.js", "Releases"],
  ["releases/:id/failures", "page-failures.js", "Releases"],
  ["tasks", "page-tasks.js", "Tasks"],
  ["tasks/:name", "page-task.js", "Tasks"],
  ["tasks/:name/:version", "page-version.js", "Tasks"],
  ["devices", "page-devices.js", "Devices"],
  ["devices/:id", "page-device.js", "Devices"],
  ["groups", "page-groups.js", "Groups"],
  ["groups/:name", "page-group.js", "Groups"],
  ["data", "page-data.js", "Data"],
  ["admin", "page-admin.js", "Admin"],
];

const NAV = [
  ["Overview", "#/overview", () => true],
  ["Releases", "#/releases", () => true],
  ["New release", "#/releases/new", () => may("create_release") || may("preview_release")],
  ["Tasks", "#/tasks", () => true],
  ["Devices", "#/devices", () => true],
  ["Groups", "#/groups", () => true],
  ["Data", "#/data", () => true],
  ["Admin", "#/admin", () => may("admin")],
];

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [pathPart, queryPart = ""] = raw.split("?");
  const segments = pathPart.split("/").filter(Boolean);
  return { segments, query: new URLSearchParams(queryPart) };
}

function match(segments) {
  if (!segments.length) return { route: ROUTES[0], params: {} };
  for (const route of ROUTES) {
    const parts = route[0].split("/");
    if (parts.length !== segments.length) continue;
    const params = {};
    let ok = true;
    parts.forEach((p, i) => {
      if (p.startsWith(":")) {
        try {
          params[p.slice(1)] = decodeURIComponent(segments[i]);
        } catch {
          params[p.slice(1)] = segments[i];
        }
      } else if (p !== segments[i]) ok = false;
    });
    if (ok) return { route, params };
  }
  return null;
}

function renderNav(section) {
  nav.replaceChildren(h("ul", {}, NAV.filter(([, , show]) => show()).map(([label, href]) =>
    h("li", {}, h("a", { href, "aria-current": label === section ? "page" : null }, label)))));
  nav.hidden = false;
  navToggle.hidden = false;
  who.hidden = false;
  whoami.replaceChildren(h("span", { class: "who-name" }, me.name || me.id), " ",
    h("span", { class: "role" }, me.role));
  whoami.title = `Signed in as ${me.name} (${me.id}), role ${me.role}`;
}

function hideChrome() {
  nav.hidden = true;
  navToggle.hidden = true;
  who.hidden = true;
  nav.replaceChildren();
}

// ---- sign-in ----

function renderSignIn() {
  if (pageController) pageController.abort();
  hideChrome();
  document.title = "Sign in · Walle console";
  const input = h("input", { type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const errorSlot = h("div");
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", {
    class: "signin card",
    onsubmit: async (event) => {
      event.preventDefault();
      errorSlot.replaceChildren();
      const token = input.value.trim();
      if (!token) {
        errorSlot.append(alertBox("Enter an operator token."));
        return;
      }
      button.disabled = true;
      try {
        me = await whoAmI(token);
        setToken(token);
        signInMessage = "";
        if (!location.hash || location.hash === "#/" || location.hash.startsWith("#/signin")) {
          location.hash = "#/overview";
        } else {
          route();
        }
      } catch (e) {
        errorSlot.append(alertBox(e, "Sign-in failed"));
      } finally {
        button.disabled = false;
      }
    },
  },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Use an operator token. The first admin token is in the cloud's data directory (",
    h("code", {}, "admin.token"), ")."),
  signInMessage ? h("div", { class: "notice", role: "status" }, signInMessage) : null,
  field("Operator token", input, { help: "Kept in this browser tab only (session storage) until you sign out." }),
  errorSlot,
  h("div", { class: "actions" }, button));
  main.replaceChildren(form);
  input.focus();
}

// Who the token belongs to and what it may do (GET /v1/me). Any failure is shown at sign-in.
function whoAmI(token) {
  return api("/me", { token });
}

function signOut(message) {
  clearToken();
  me = null;
  signInMessage = message || "";
  if (pageController) pageController.abort();
  renderSignIn();
}

setUnauthorizedHandler((message) => {
  if (!getToken() && !me) return;
  signOut(`You were signed out: the cloud answered ${message}. Sign in again.`);
});

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
navToggle.addEventListener("click", () => {
  const open = navToggle.getAttribute("aria-expanded") !== "true";
  navToggle.setAttribute("aria-expanded", String(open));
  nav.classList.toggle("open", open);
});
document.getElementById("skip").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});

// ---- router ----

async function route() {
  if (pageController) pageController.abort();
  if (!getToken()) {
    renderSignIn();
    return;
  }
  if (!me) {
    main.replaceChildren(h("p", { class: "muted", role: "status" }, "Checking your token…"));
    try {
      me = await whoAmI(getToken());
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        signOut(`You were signed out: the cloud answered ${e.message}. Sign in again.`);
        return;
      }
      hideChrome();
      main.replaceChildren(h("h1", {}, "Cannot sign in"), alertBox(e),
        h("button", { type: "button", onclick: () => signOut("") }, "Back to sign-in"));
      return;
    }
  }
  const { segments, query } = parseHash();
  const found = match(segments);
  const controller = new AbortController();
  pageController = controller;
  nav.classList.remove("open");
  navToggle.setAttribute("aria-expanded", "false");
  if (!found) {
    renderNav("");
    main.replaceChildren(h("h1", {}, "Page not found"),
      h("p", {}, "No page at ", h("code", {}, location.hash), ". ", h("a", { href: "#/overview" }, "Go to the overview.")));
    return;
  }
  const [, module, section] = found.route;
  renderNav(section);
  main.replaceChildren(h("p", { class: "muted", role: "status" }, "Loading…"));
  try {
    const page = await import(`./${module}`);
    if (controller.signal.aborted) return;
    main.replaceChildren();
    await page.render({
      main, params: found.params, query, me, may, signal: controller.signal,
      navigate: (hash) => { location.hash = hash; },
    });
  } catch (e) {
    if (e.name === "AbortError" || controller.signal.aborted) return;
    if (e instanceof ApiError && e.status === 401) return;
    if (!main.querySelector("h1")) main.append(h("h1", {}, section));
    main.append(alertBox(e));
  }
  if (controller.signal.aborted) return;
  const h1 = main.querySelector("h1");
  document.title = `${h1 ? h1.textContent : section} · Walle console`;
  if (!firstRender && h1) {
    h1.setAttribute("tabindex", "-1");
    h1.focus({ preventScroll: false });
  }
  firstRender = false;
}

// A token in the URL fragment (`#token=…`, printed by `walle demo`) is never sent to the server;
// take it and drop it from the address bar.
const fragmentToken = new URLSearchParams(location.hash.replace(/^#/, "")).get("token");
if (fragmentToken) {
  setToken(fragmentToken);
  history.replaceState(null, "", `${location.pathname}#/overview`);
}

window.addEventListener("hashchange", route);
route();

export { uid };
