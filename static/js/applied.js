// Who applied what, kept current: each ".applied-part" names the URL that renders it and the
// topics it shows. A receipt or a drift on those topics (and, on a topic page, a new event: a new
// value in force) has the part fetched again and swapped in whole; so does a passing deadline.
// The part is the server's own autoescaped HTML, parsed inert by DOMParser, never set as innerHTML.
import { openFeed } from "./feed.js";

const parts = [...document.querySelectorAll(".applied-part")];
const connection = document.getElementById("applied-connection") ?? document.createElement("span");
const REFRESH_AFTER_MS = 150; // items come in bursts: one fetch for a burst
let refreshing = null;
let deadlineTimer = null;

async function refresh() {
  refreshing = null;
  for (const part of parts) {
    let response;
    try {
      response = await fetch(part.dataset.url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch {
      continue; // the server is away: the part stays as it was, and the feed's reconnect asks again
    }
    if (!response.ok) continue; // signed out or rights withdrawn: the feed says so
    const html = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = html.body.firstElementChild;
    if (fresh) part.replaceChildren(document.importNode(fresh, true));
  }
  armDeadline();
  document.dispatchEvent(new CustomEvent("applied:refreshed"));
}

function soon() {
  if (!refreshing) refreshing = setTimeout(refresh, REFRESH_AFTER_MS);
}

// A subscriber still in time becomes overdue at its deadline: look again just after it.
function armDeadline() {
  clearTimeout(deadlineTimer);
  const waits = parts
    .map((part) => part.firstElementChild?.dataset.nextDue)
    .filter((value) => value !== undefined && value !== "")
    .map(Number);
  if (waits.length) deadlineTimer = setTimeout(soon, (Math.min(...waits) + 0.5) * 1000);
}

const topics = [...new Set(parts.flatMap((part) => (part.dataset.topics || "").split(" ").filter(Boolean)))];
const notice = (message) => {
  connection.textContent = message;
};
if (topics.length) {
  openFeed({ path: "/ws/subscribers/", topics, frameType: "subscribers", connection, onOpen: soon, onItems: soon, onNotice: notice });
  const traffic = parts.filter((part) => part.dataset.traffic === "on").flatMap((part) => part.dataset.topics.split(" "));
  if (traffic.length) {
    const quiet = document.createElement("span"); // one connection badge is enough
    openFeed({ path: "/ws/traffic/", topics: traffic, frameType: "events", connection: quiet, onItems: soon, onNotice: notice });
  }
  armDeadline();
}
