// Dead letters as they arrive, over /ws/dlq/: a new row at the top of the table, written
// with textContent only (a dead letter is untrusted input by definition). Frames are
// acknowledged so a slow tab is told what it skipped rather than flooded.

import { openFeed, sourceLabel, statusCell, textCell } from "./feed.js";

const topics = JSON.parse(document.getElementById("dlq-topics").textContent);
const body = document.querySelector("#letters tbody");
const connection = document.getElementById("connection");
const notice = document.getElementById("feed-notice");

function say(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

function arrived(item) {
  body.querySelector("tr.empty")?.remove();
  const row = document.createElement("tr");
  row.className = "letter new";
  const number = document.createElement("a");
  number.href = `/dlq/${encodeURIComponent(item.letter)}/`;
  number.textContent = item.letter;
  textCell(row, "").append(number);
  textCell(row, new Date(item.received_at * 1000).toISOString().replace("T", " ").slice(0, 19));
  textCell(row, item.topic);
  textCell(row, sourceLabel(item.source));
  statusCell(row, "open");
  textCell(row, (item.errors || []).slice(0, 3).map((error) => `${error.path} ${error.message}`).join("; ")).className = "small";
  // Labelled as the server's rows are: on a phone each row is a card of "label: value" lines.
  const labels = [...document.querySelectorAll("#letters thead th")].map((th) => th.textContent);
  row.querySelectorAll("td").forEach((cell, index) => { cell.dataset.label = labels[index] ?? ""; });
  body.prepend(row);
}

for (const select of document.querySelectorAll("select.autosubmit")) {
  select.addEventListener("change", () => select.form.submit());
}
openFeed({
  path: "/ws/dlq/",
  topics,
  frameType: "dead_letters",
  connection,
  onItems: (items) => items.forEach(arrived),
  onNotice: say,
});
