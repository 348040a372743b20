// The generation panel's place. It mounts like the others; until the server runs the
// "generate" feature it only says so. The generation feature fills this module in: a
// prompt form (POST /v1/generate), live previews from the job's Server-Sent Events
// (GET /v1/jobs/{id}/events), the result, and a cancel button (DELETE /v1/jobs/{id}).

export const name = "generate";

export async function mount({ el, enabled }) {
  const body = el.querySelector("#generate-body");
  const note = document.createElement("p");
  note.className = "muted";
  note.id = "generate-status";
  note.textContent = enabled ? "Generation is available." : "Generation is not enabled on this server.";
  body.replaceChildren(note);
}
