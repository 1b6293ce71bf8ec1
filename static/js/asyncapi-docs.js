// The AsyncAPI page: read the document (same origin, with the session) and post it to the
// renderer's frame. The frame is sandboxed (an opaque origin): it reaches neither this page, nor
// the API, nor the session, so the component's bundle may evaluate code there and nowhere else.
// The frame is made here, after the listener, so its "ready" cannot come before we listen.

const viewer = document.getElementById("asyncapi-viewer");
const status = document.getElementById("asyncapi-status");
const documentUrl = viewer.dataset.document;

const loaded = fetch(documentUrl, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(
  (answer) => {
    if (!answer.ok) throw new Error(`${documentUrl} answered ${answer.status}`);
    return answer.json();
  },
);

const frame = document.createElement("iframe");
frame.setAttribute("sandbox", "allow-scripts");
frame.title = "AsyncAPI document";
let sent = false;

function anchor() {
  return decodeURIComponent(window.location.hash.slice(1));
}

window.addEventListener("message", (event) => {
  if (event.source !== frame.contentWindow) return;
  const kind = event.data && event.data.kind;
  if (kind === "asyncapi-ready" && !sent) {
    sent = true; // once: whatever the frame shows later gets nothing more from here
    loaded
      .then((document_) => {
        frame.contentWindow.postMessage({ kind: "asyncapi-document", document: document_, anchor: anchor() }, "*");
      })
      .catch((error) => {
        status.textContent = `The document could not be read: ${error.message}`;
      });
  } else if (kind === "asyncapi-rendered") {
    const topics = Number(event.data.topics) || 0;
    status.textContent = `${topics} topic${topics === 1 ? "" : "s"} shown.`;
  } else if (kind === "asyncapi-failed") {
    status.textContent = `The document could not be shown: ${String(event.data.message)}`;
  }
});

window.addEventListener("hashchange", () => {
  if (sent) frame.contentWindow.postMessage({ kind: "asyncapi-anchor", anchor: anchor() }, "*");
});

frame.src = viewer.dataset.frame;
viewer.append(frame);
