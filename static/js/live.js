// Live traffic: events from /ws/traffic/, newest first, and dead letters in red among them.
// Every value is written with textContent, never as HTML: payloads are untrusted. Each frame is
// acknowledged after it is drawn, so a tab that falls behind is sent less and told how many it
// skipped. After a reconnect the gap is filled from history (/live/events/?after=<last id seen>);
// dead letters missed meanwhile are on /dlq/. Registered services' receipts (/ws/subscribers/)
// show as badges on their event's row.

import { topicColor } from "./colors.js";
import { openFeed, sourceLabel, statusCell, textCell } from "./feed.js";

const topics = JSON.parse(document.getElementById("live-topics").textContent);
const body = document.querySelector("#live tbody");
const connection = document.getElementById("connection");
const notice = document.getElementById("feed-notice");
const held = document.getElementById("held");
const pauseButton = document.getElementById("pause");
const filters = {
  topic: document.getElementById("filter-topic"),
  type: document.getElementById("filter-type"),
  text: document.getElementById("filter-text"),
};
const ROWS_KEPT = 500;
const HELD_KEPT = 2000;
const SPARK_SECONDS = 60;

let lastId = null;
let paused = false;
let heldItems = [];
const perSecond = new Map(topics.map((topic) => [topic, new Array(SPARK_SECONDS).fill(0)]));

function say(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

function payloadSummary(item) {
  if (item.payload === undefined) return `(${item.payload_omitted_bytes} bytes: open the record)`;
  const text = JSON.stringify(item.payload);
  return text.length > 160 ? text.slice(0, 159) + "…" : text;
}

function matches(row) {
  const { topic, type, text } = row.dataset;
  return (!filters.topic.value || topic === filters.topic.value)
    && (!filters.type.value || type.includes(filters.type.value.trim()))
    && (!filters.text.value || row.textContent.toLowerCase().includes(filters.text.value.trim().toLowerCase()));
}

function draw(item) {
  const letter = item.status === "dead-lettered";
  const row = document.createElement("tr");
  row.className = letter ? "event dead-lettered" : "event";
  if (letter) {
    row.dataset.letter = item.letter;
    row.dataset.href = `/dlq/${encodeURIComponent(item.letter)}/`;
  } else {
    row.dataset.id = item.id;
    row.dataset.href = `/events/${encodeURIComponent(item.id)}/`;
  }
  row.dataset.topic = item.topic;
  row.dataset.type = item.type;
  textCell(row, new Date(item.timestamp * 1000).toISOString().replace("T", " ").slice(0, 23));
  textCell(row, item.topic);
  textCell(row, item.type || "(none named)").className = "mono";
  textCell(row, item.publisher);
  textCell(row, sourceLabel(item.source));
  const status = statusCell(row, item.status);
  if (item.not_approved) {
    // Put on the bus by an external publisher while its topic was sensitive: nobody approved it.
    const mark = document.createElement("span");
    mark.className = "status not-approved";
    mark.title = "An external publisher's event on a sensitive topic: no second person approved it";
    mark.textContent = "not approved";
    status.append(" ", mark);
    row.classList.add("not-approved");
  }
  // A dead letter's body is shown as the text that arrived, after the rule it broke.
  textCell(row, letter ? `${item.cause} — ${item.text}` : payloadSummary(item)).className = "mono payload";
  textCell(row, "").className = "services";
  for (const receipt of early.get(item.id) ?? []) badgeAdd(row, receipt);
  early.delete(item.id);
  row.hidden = !matches(row);
  body.prepend(row);
  while (body.rows.length > ROWS_KEPT) body.deleteRow(body.rows.length - 1);
}

function marker(text) {
  const row = document.createElement("tr");
  row.className = "marker";
  const td = textCell(row, text);
  td.colSpan = 8;
  body.prepend(row);
}

function arrived(item) {
  if (item.status !== "dead-lettered") {
    lastId = item.id;  // the gap is filled from history, which holds events only
    // Counted in the second it was published: events read from history after a reconnect
    // land where they belong, or nowhere if they are older than the sparkline's minute.
    const counts = perSecond.get(item.topic);
    const age = Math.max(0, Math.floor(Date.now() / 1000 - item.timestamp));  // a clock behind the server: now
    if (counts && age < SPARK_SECONDS) counts[SPARK_SECONDS - 1 - age] += 1;
  }
  if (paused) {
    heldItems.push(item);
    if (heldItems.length > HELD_KEPT) heldItems.shift();
    held.textContent = `${heldItems.length} new while paused`;
  } else {
    draw(item);
  }
}

async function fillGap() {
  const url = lastId ? `/live/events/?after=${encodeURIComponent(lastId)}` : "/live/events/";
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const answer = await response.json();
    if (!response.ok) {
      say(answer.errors.map((error) => error.message).join("; "));
      return;
    }
    answer.events.forEach(arrived);
    if (answer.more) marker("More events arrived while disconnected than fit here: the history has them all.");
  } catch (error) {
    say(`Could not read the history to fill the gap: ${error}`);
  }
}

function refilter() {
  for (const row of body.querySelectorAll("tr.event")) row.hidden = !matches(row);
}

function drawSparklines() {
  const box = document.getElementById("sparklines");
  for (const [topic, counts] of perSecond) {
    let canvas = box.querySelector(`canvas[data-topic="${CSS.escape(topic)}"]`);
    if (!canvas) {
      const figure = document.createElement("figure");
      canvas = document.createElement("canvas");
      canvas.width = 120;
      canvas.height = 28;
      canvas.dataset.topic = topic;
      const caption = document.createElement("figcaption");
      figure.append(canvas, caption);
      box.appendChild(figure);
    }
    const peak = Math.max(1, ...counts);
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.strokeStyle = topicColor(topic);
    context.beginPath();
    counts.forEach((count, index) => {
      const x = (index / (SPARK_SECONDS - 1)) * (canvas.width - 1);
      const y = canvas.height - 1 - (count / peak) * (canvas.height - 2);
      if (index === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
    canvas.nextElementSibling.textContent = `${topic}: ${counts[counts.length - 1]}/s`;
    counts.shift();
    counts.push(0);
  }
}

pauseButton.addEventListener("click", () => {
  paused = !paused;
  pauseButton.textContent = paused ? "Resume" : "Pause";
  pauseButton.setAttribute("aria-pressed", String(paused));
  if (!paused) {
    heldItems.forEach(draw);
    heldItems = [];
    held.textContent = "";
  }
});
for (const input of Object.values(filters)) input.addEventListener("input", refilter);
body.addEventListener("click", (event) => {
  const row = event.target.closest("tr.event");
  if (row) location.href = row.dataset.href;
});
setInterval(drawSparklines, 1000);
// A registered service's receipt, as a badge on its event's row: who applied, ignored or rejected it.
// A receipt can beat its event here (the two feeds are apart): kept a moment for the row to come.
const early = new Map();
const EARLY_KEPT = 1000;

function receiptShown(item) {
  if (item.kind !== "receipt") return;  // drift is the topic page's and the dashboard's
  const row = body.querySelector(`tr.event[data-id="${CSS.escape(item.event)}"]`);
  if (!row) {
    early.set(item.event, [...(early.get(item.event) ?? []), item]);
    if (early.size > EARLY_KEPT) early.delete(early.keys().next().value);  // older than the rows kept
    return;
  }
  badgeAdd(row, item);
}

function badgeAdd(row, item) {
  const badge = document.createElement("span");
  badge.className = `status ${item.status}`;
  badge.textContent = item.subscriber;
  badge.title = item.detail ? `${item.status}: ${item.detail}` : item.status;
  row.querySelector("td.services").append(badge, " ");
}

openFeed({
  path: "/ws/subscribers/",
  topics,
  frameType: "subscribers",
  connection: document.createElement("span"),  // the traffic feed's badge speaks for both
  onItems(items) {
    items.forEach(receiptShown);
  },
  onNotice: say,
});
openFeed({
  path: "/ws/traffic/",
  topics,
  frameType: "events",
  connection,
  onOpen: fillGap,
  onItems(items, skipped) {
    if (skipped) marker(`${skipped} events skipped: this page fell behind (the history has them all).`);
    items.forEach(arrived);
  },
  onNotice: say,
});
