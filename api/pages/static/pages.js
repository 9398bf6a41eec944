// Live updates for Kiln's jobs pages: the list refreshes itself, a job's page follows its events.
"use strict";

const LIST_REFRESH_MS = 2000;

async function refreshList() {
  const answer = await fetch(window.location.href, { credentials: "same-origin" });
  if (!answer.ok || answer.redirected) return;
  const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
  const body = fresh.querySelector("#jobs tbody");
  if (body) document.querySelector("#jobs tbody").replaceWith(body);
}

function followList() {
  setInterval(() => refreshList().catch(() => {}), LIST_REFRESH_MS);
}

function addEvent(type, text) {
  const item = document.createElement("li");
  item.className = "event event-" + type;
  item.textContent = type + ": " + text;
  document.getElementById("events").append(item);
}

function followJob() {
  const job = document.getElementById("job");
  const wasFinished = job.dataset.finished === "true";
  const source = new EventSource("/jobs/" + encodeURIComponent(job.dataset.jobId) + "/events");
  const output = document.getElementById("output");
  source.addEventListener("status", (message) => {
    const data = JSON.parse(message.data);
    addEvent("status", data.status + (data.attempt ? " (attempt " + data.attempt + ")" : ""));
    const status = document.getElementById("status");
    status.textContent = data.status;
    status.className = "status status-" + data.status;
    if (["succeeded", "failed", "canceled"].includes(data.status)) {
      // The server ends the stream here; without close() the browser would reconnect.
      source.close();
      // Reload once to show the result, duration and deliveries the row now holds.
      if (!wasFinished) window.location.reload();
    }
  });
  source.addEventListener("progress", (message) => addEvent("progress", message.data));
  source.addEventListener("token", (message) => {
    output.textContent += JSON.parse(message.data).delta;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "jobs") followList();
  if (document.body.dataset.page === "job") followJob();
});
