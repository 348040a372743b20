// The generation panel: a prompt form (POST /v1/generate), live previews from the job's
// Server-Sent Events (GET /v1/jobs/{id}/events, read with fetch so the API key travels in
// a header), the result when it finishes, and a cancel button (DELETE /v1/jobs/{id}).
import { ApiFailure, api, apiKey, blobUrl } from "./api.js";

export const name = "generate";

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// Calls onEvent(kind, data) for each event of the job's stream until it ends.
async function follow(jobId, onEvent) {
  const headers = apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {};
  const response = await fetch(`/v1/jobs/${jobId}/events`, { headers });
  if (!response.ok) throw new ApiFailure(response.status, `event stream: ${response.status}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}

export async function mount({ el: panel, enabled, showError }) {
  const body = panel.querySelector("#generate-body");
  if (!enabled) {
    body.replaceChildren(el("p", { className: "muted", id: "generate-status",
                                   textContent: "Generation is not enabled on this server." }));
    return;
  }
  const prompt = el("input", { id: "generate-prompt", type: "text", maxLength: 2000,
                               placeholder: "a red star:1|blurry:-0.5", value: "a red star" });
  const steps = el("input", { id: "generate-steps", type: "number", min: 1, max: 1000, value: 60 });
  const seed = el("input", { id: "generate-seed", type: "number", min: 0, placeholder: "random" });
  const start = el("button", { id: "generate-button", type: "submit", textContent: "Generate" });
  const cancel = el("button", { id: "generate-cancel", type: "button", textContent: "Cancel", disabled: true });
  const status = el("p", { id: "generate-status", className: "muted", textContent: "" });
  const image = el("img", { id: "generate-image", alt: "", hidden: true, width: 256, height: 256 });
  const form = el("form", { id: "generate-form" }, [
    prompt, el("label", {}, ["steps ", steps]), el("label", {}, ["seed ", seed]), start, cancel]);
  body.replaceChildren(form, status, image);

  let current = null;
  let shown = null;
  async function show(path) {
    try {
      const url = await blobUrl(path);
      if (shown) URL.revokeObjectURL(shown);
      shown = url;
      image.src = url;
      image.hidden = false;
    } catch (e) {
      showError(`preview: ${e.message}`);
    }
  }

  cancel.addEventListener("click", async () => {
    if (!current) return;
    cancel.disabled = true;
    try {
      await fetch(`/v1/jobs/${current}`, { method: "DELETE",
                                            headers: apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {} });
    } catch (e) {
      showError(`cancel: ${e.message}`);
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("");
    const request = { prompt: prompt.value, steps: Number(steps.value) };
    if (seed.value !== "") request.seed = Number(seed.value);
    start.disabled = true;
    try {
      const job = await api("/v1/generate", request);
      current = job.id;
      cancel.disabled = false;
      status.textContent = job.queue_position ? `queued (${job.queue_position} ahead)` : "starting";
      panel.dataset.job = job.id;
      await follow(job.id, (kind, data) => {
        status.textContent = `${data.status}: step ${data.step} of ${data.steps}` +
          (data.loss == null ? "" : `, loss ${data.loss.toFixed(3)}`);
        if (data.preview) show(data.preview);
        if (kind === "done") panel.dataset.finished = data.status;
      });
      const final = await api(`/v1/jobs/${current}`);
      if (final.result) await show(final.result);
      if (final.error) showError(final.error);
    } catch (e) {
      showError(e.message);
    } finally {
      start.disabled = false;
      cancel.disabled = true;
    }
  });
}
