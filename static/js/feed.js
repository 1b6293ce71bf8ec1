// What the live pages share: a websocket feed that subscribes to topics, acknowledges each
// frame once it is handled (so a slow tab is sent less, and told what it skipped), and
// reconnects with backoff; and table cells written as text, never as HTML.

export function textCell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

// A status as the server's pages show it: a badge whose class is the status itself.
export function statusCell(row, status) {
  const td = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = `status ${status}`;
  badge.textContent = status;
  td.append(badge);
  row.appendChild(td);
  return td;
}

// Where an item came from, in the words the server's pages use ("external publisher", not "external").
const sourceLabels = JSON.parse(document.getElementById("source-labels")?.textContent ?? "{}");
export function sourceLabel(source) {
  return sourceLabels[source] ?? source ?? "";
}

export function openFeed({ path, topics, frameType, connection, onOpen, onItems, onNotice }) {
  let retryDelay = 500;
  const show = (state) => {
    connection.textContent = state;
    connection.className = `connection ${state === "live" ? "live" : "down"}`;
  };
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${path}`);
    socket.addEventListener("open", async () => {
      show("live");
      retryDelay = 500;
      if (onOpen) await onOpen();
      socket.send(JSON.stringify({ action: "subscribe", topics }));
    });
    socket.addEventListener("message", (message) => {
      const frame = JSON.parse(message.data);
      if (frame.type === frameType) {
        onItems(frame.items, frame.skipped);
        socket.send(JSON.stringify({ action: "ack", seq: frame.seq }));
      } else if (frame.type === "revoked") {
        onNotice(`Your right to view ${frame.topic} was withdrawn: it is no longer shown.`);
      } else if (frame.type === "error") {
        onNotice(frame.message);
      }
    });
    socket.addEventListener("close", (event) => {
      if (event.code === 4401) {
        show("signed out");
        onNotice("Your session ended: sign in again to watch.");
        return;
      }
      show("reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    });
  }
  connect();
}
