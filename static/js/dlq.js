// Dead letters as they arrive, over /ws/dlq/: a new row at the top of the table, written
// with textContent only (a dead letter is untrusted input by definition). Frames are
// acknowledged so a slow tab is told what it skipped rather than flooded.

const topics = JSON.parse(document.getElementById("dlq-topics").textContent);
const body = document.querySelector("#letters tbody");
const connection = document.getElementById("connection");
let retryDelay = 500;

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function arrived(item) {
  body.querySelector("tr.empty")?.remove();
  const row = document.createElement("tr");
  row.className = "letter new";
  cell(row, "new");
  cell(row, new Date(item.received_at * 1000).toISOString().replace("T", " ").slice(0, 19));
  cell(row, item.topic);
  cell(row, item.source ?? "");
  cell(row, "open");
  cell(row, (item.errors || []).slice(0, 3).map((error) => `${error.path} ${error.message}`).join("; ")).className = "small";
  body.prepend(row);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws/dlq/`);
  socket.addEventListener("open", () => {
    connection.textContent = "live";
    connection.className = "connection live";
    retryDelay = 500;
    socket.send(JSON.stringify({ action: "subscribe", topics }));
  });
  socket.addEventListener("message", (message) => {
    const frame = JSON.parse(message.data);
    if (frame.type !== "dead_letters") return;
    frame.items.forEach(arrived);
    socket.send(JSON.stringify({ action: "ack", seq: frame.seq }));
  });
  socket.addEventListener("close", (event) => {
    connection.className = "connection down";
    connection.textContent = event.code === 4401 ? "signed out" : "reconnecting…";
    if (event.code !== 4401) {
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    }
  });
}

for (const select of document.querySelectorAll("select.autosubmit")) {
  select.addEventListener("change", () => select.form.submit());
}
connect();
