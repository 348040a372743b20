// Boots the page: reads /v1/info, then mounts each panel module on its <section data-panel=NAME>.
// A panel is a module exporting `name` and `mount(ctx)`; ctx = {el, info, enabled, showError}.
// A feature the server does not run still mounts, with enabled = false, and says so.
import { ApiFailure, api, apiKey, setApiKey } from "./api.js";
import * as classify from "./classify.js";
import * as generate from "./generate.js";
import * as search from "./search.js";

const PANELS = [search, classify, generate];

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function boot() {
  const keyInput = document.getElementById("api-key");
  keyInput.value = apiKey();
  document.getElementById("api-key-save").addEventListener("click", () => {
    setApiKey(keyInput.value.trim());
    location.reload();
  });
  let info;
  try {
    info = await api("/v1/info");
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 401) document.getElementById("key-box").open = true;
    showError(`Cannot reach the API: ${e.message}`);
    return;
  }
  document.getElementById("model-info").textContent =
    `${info.model.name} on ${info.model.backend} - ${info.model.dim}-d embeddings - vqclip ${info.version}`;
  for (const panel of PANELS) {
    const el = document.querySelector(`[data-panel="${panel.name}"]`);
    if (!el) continue;
    try {
      await panel.mount({ el, info, enabled: info.features.includes(panel.name), showError });
    } catch (e) {
      showError(`The ${panel.name} panel failed to start: ${e.message}`);
    }
  }
  document.body.dataset.ready = "true"; // for tests and for people: everything is mounted
}

boot();
