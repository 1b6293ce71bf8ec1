// Dashboard charts (Chart.js 4.5.1, vendored under static/vendor/): events per topic over the
// last hour, day or week, and open dead letters per topic, read again while the page is open.
// Each topic keeps its colour (colors.js); a point opens the history of that topic and bucket,
// a bar the topic's dead letters. Times are UTC, as everywhere in the product.

import { topicColor } from "./colors.js";

const REFRESH_MS = { "1h": 10000, "24h": 60000, "7d": 300000 };
const caption = document.getElementById("events-caption");
const rangeButtons = [...document.querySelectorAll("#chart-ranges button")];
let range = "1h";
let series = null;
let eventsChart = null;
let dlqChart = null;
let timer = null;

// "09:42" within a day; "12-03 09:00" over a week.
function bucketLabel(iso) {
  return range === "7d" ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
}

function historyUrl(topic, bucketIso) {
  const since = new Date(bucketIso);
  const until = new Date(since.getTime() + series.bucket_seconds * 1000 - 1000);
  const query = new URLSearchParams({
    topic,
    period: "custom",
    since: since.toISOString().slice(0, 19) + "Z",
    until: until.toISOString().slice(0, 19) + "Z",
  });
  return `/events/?${query}`;
}

function axes(yTitle) {
  return {
    x: { title: { display: true, text: "Time (UTC)" } },
    y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: yTitle } },
  };
}

function draw() {
  const topics = Object.keys(series.events);
  const datasets = topics.map((topic) => ({
    label: topic,
    data: series.events[topic],
    borderColor: topicColor(topic),
    backgroundColor: topicColor(topic),
    pointRadius: range === "1h" ? 0 : 2,
    pointHitRadius: 6,
    tension: 0.2,
  }));
  const yTitle = series.bucket_seconds === 60 ? "events per minute" : "events per hour";
  caption.textContent = series.title;
  if (eventsChart) eventsChart.destroy();
  eventsChart = new window.Chart(document.getElementById("events-chart"), {
    type: "line",
    data: { labels: series.buckets.map(bucketLabel), datasets },
    options: {
      animation: false,
      responsive: true,
      scales: axes(yTitle),
      onClick(event, elements) {
        const [hit] = elements;
        if (hit) location.href = historyUrl(topics[hit.datasetIndex], series.buckets[hit.index]);
      },
      onHover(event, elements) {
        event.native.target.style.cursor = elements.length ? "pointer" : "default";
      },
    },
  });
  const dlqTopics = Object.keys(series.dead_letters_open);
  const dlqData = dlqTopics.map((topic) => series.dead_letters_open[topic]);
  const dlqColors = dlqTopics.map(topicColor);
  if (!dlqChart) {
    dlqChart = new window.Chart(document.getElementById("dlq-chart"), {
      type: "bar",
      data: { labels: dlqTopics, datasets: [{ label: "open dead letters", data: dlqData, backgroundColor: dlqColors }] },
      options: {
        animation: false,
        responsive: true,
        plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "open dead letters" } } },
        onClick(event, elements) {
          const [hit] = elements;
          if (hit) location.href = `/dlq/?${new URLSearchParams({ topic: dlqChart.data.labels[hit.index] })}`;
        },
        onHover(event, elements) {
          event.native.target.style.cursor = elements.length ? "pointer" : "default";
        },
      },
    });
  } else {
    dlqChart.data.labels = dlqTopics;
    dlqChart.data.datasets[0].data = dlqData;
    dlqChart.data.datasets[0].backgroundColor = dlqColors;
    dlqChart.update();
  }
}

async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch(`/dashboard/series/?range=${range}`, { headers: { Accept: "application/json" } });
    if (response.ok) {
      series = await response.json();
      draw();
    }
  } finally {
    timer = setTimeout(refresh, REFRESH_MS[range]);
  }
}

for (const button of rangeButtons) {
  button.addEventListener("click", () => {
    range = button.dataset.range;
    for (const other of rangeButtons) other.setAttribute("aria-pressed", String(other === button));
    refresh();
  });
}
refresh();
