// A bulk action's progress bar, fed by the bus worker over /ws/dlq/bulk/<id>/; when the
// action ends the page reloads once to show the whole report.

const initial = JSON.parse(document.getElementById("bulk-initial").textContent);
const bar = document.getElementById("bulk-progress");
const statusBadge = document.getElementById("bulk-status");

// "about 12 s left", "about 3 min left": the letters still to handle at the action's rate.
function timeLeft(seconds) {
  if (seconds < 90) return `about ${seconds} s left`;
  return `about ${Math.round(seconds / 60)} min left`;
}

function show(progress) {
  bar.max = Math.max(1, progress.total);
  bar.value = progress.handled;
  document.getElementById("bulk-handled").textContent = progress.handled;
  document.getElementById("bulk-succeeded").textContent = progress.succeeded;
  document.getElementById("bulk-skipped").textContent = progress.skipped;
  statusBadge.textContent = progress.status;
  statusBadge.className = `status ${progress.status}`;
  document.getElementById("bulk-left").textContent = progress.status === "running" ? timeLeft(progress.seconds_left) : "";
}

if (initial.status === "running") {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws/dlq/bulk/${initial.id}/`);
  socket.addEventListener("message", (message) => {
    const progress = JSON.parse(message.data);
    show(progress);
    if (progress.status !== "running") {
      socket.close();
      location.reload();
    }
  });
}
