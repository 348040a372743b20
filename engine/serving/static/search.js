// The search panel: a text query against a loaded index, results as thumbnails with scores.
import { api, blobUrl } from "./api.js";

export const name = "search";

function hitFigure(hit) {
  const fig = document.createElement("figure");
  fig.className = "hit";
  const img = document.createElement("img");
  img.alt = hit.path;
  const cap = document.createElement("figcaption");
  cap.textContent = `${hit.score.toFixed(3)} ${hit.path}`;
  fig.append(img, cap);
  blobUrl(hit.thumbnail).then((url) => { img.src = url; }, () => { img.alt = `${hit.path} (no thumbnail)`; });
  return fig;
}

export async function mount({ el, enabled, showError }) {
  const status = el.querySelector("#search-status");
  const select = el.querySelector("#search-index");
  const button = el.querySelector("#search-button");
  if (!enabled) {
    status.textContent = "Search is not enabled on this server.";
    button.disabled = true;
    return;
  }
  const { indexes } = await api("/v1/indexes");
  for (const ix of indexes) {
    const opt = document.createElement("option");
    opt.value = ix.name;
    opt.textContent = `${ix.name} (${ix.entries} images)`;
    select.append(opt);
  }
  if (!indexes.length) {
    status.textContent = "No index is loaded: start the server with --index NAME=PATH.";
    button.disabled = true;
    return;
  }
  el.querySelector("#search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const results = el.querySelector("#search-results");
    const text = el.querySelector("#search-text").value.trim();
    if (!text) return;
    button.disabled = true;
    showError("");
    status.textContent = "Searching...";
    const started = performance.now();
    try {
      const k = Number(el.querySelector("#search-k").value) || 12;
      const answer = await api("/v1/search", { index: select.value, text, k });
      results.replaceChildren(...answer.hits.map(hitFigure));
      status.textContent = `${answer.hits.length} results in ${Math.round(performance.now() - started)} ms`;
    } catch (e) {
      status.textContent = "";
      showError(`Search failed: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  });
}
