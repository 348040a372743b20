// The classify panel: drop or pick an image, type labels, see them ranked with probabilities.
import { api, readAsDataUrl } from "./api.js";

export const name = "classify";

function labelRow({ label, prob }) {
  const li = document.createElement("li");
  li.className = "label-row";
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.style.width = `${Math.max(1, Math.round(prob * 200))}px`;
  const text = document.createElement("span");
  text.textContent = `${(prob * 100).toFixed(1)}% ${label}`;
  li.append(bar, text);
  return li;
}

export async function mount({ el, enabled, showError }) {
  const drop = el.querySelector("#classify-drop");
  const input = el.querySelector("#classify-file");
  const preview = el.querySelector("#classify-preview");
  const button = el.querySelector("#classify-button");
  const results = el.querySelector("#classify-results");
  if (!enabled) {
    button.disabled = true;
    results.textContent = "Classification is not enabled on this server.";
    return;
  }
  let image = null; // data: URL of the chosen image

  async function choose(file) {
    if (!file) return;
    image = await readAsDataUrl(file);
    preview.src = image;
    preview.hidden = false;
  }
  input.addEventListener("change", () => choose(input.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });

  el.querySelector("#classify-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const labels = el.querySelector("#classify-labels").value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (!image) { showError("Choose an image to classify first."); return; }
    if (!labels.length) { showError("Type at least one label, one per line."); return; }
    button.disabled = true;
    showError("");
    try {
      const answer = await api("/v1/classify", { images: [image], labels, top_k: labels.length });
      results.replaceChildren(...answer.results[0].map(labelRow));
    } catch (e) {
      showError(`Classification failed: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  });
}
