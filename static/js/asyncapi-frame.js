// Inside the renderer's sandboxed frame: wait for the document from the page around it (only
// from it), render it with the AsyncAPI React component, and scroll to the topic asked for.

const root = document.getElementById("asyncapi");
let rendered = false;

// The component's ids for a topic: its subscribe operation, else its channel's.
function target(name) {
  if (!name) return null;
  return (
    document.getElementById(`operation-receive-${name}.receive`) ||
    document.getElementById(`operation-send-${name}.send`) ||
    document.getElementById(name)
  );
}

function scrollTo(name) {
  if (!name) return;
  const found = target(name);
  if (found) {
    found.scrollIntoView();
    return;
  }
  // The component renders after parsing: look again when it has added its content.
  const watcher = new MutationObserver(() => {
    const late = target(name);
    if (late) {
      watcher.disconnect();
      late.scrollIntoView();
    }
  });
  watcher.observe(root, { childList: true, subtree: true });
}

window.addEventListener("message", (event) => {
  if (event.source !== window.parent || !event.data) return;
  if (event.data.kind === "asyncapi-document" && !rendered) {
    rendered = true;
    const asyncapi = event.data.document;
    try {
      AsyncApiStandalone.render({ schema: asyncapi, config: { show: { sidebar: true, errors: true } } }, root);
    } catch (error) {
      window.parent.postMessage({ kind: "asyncapi-failed", message: String(error) }, "*");
      return;
    }
    const topics = Object.values(asyncapi.channels || {}).filter((channel) => !String(channel.address).endsWith(".dlq"));
    window.parent.postMessage({ kind: "asyncapi-rendered", topics: topics.length }, "*");
    scrollTo(event.data.anchor);
  } else if (event.data.kind === "asyncapi-anchor") {
    scrollTo(event.data.anchor);
  }
});

window.parent.postMessage({ kind: "asyncapi-ready" }, "*");
