// Dashboard charts (Chart.js 4.5.1, vendored under static/vendor/): events per minute per
// topic over the last hour, and open dead letters per topic, read again every 10 seconds.

const COLORS = ["#1f5fbf", "#1b7a43", "#a35a00", "#7b3fb5", "#b3261e", "#0f7c8c", "#5b6577"];
const REFRESH_MS = 10000;
let eventsChart = null;
let dlqChart = null;

function minuteLabel(iso) {
  return iso.slice(11, 16);
}

function draw(series) {
  const topics = Object.keys(series.events);
  const datasets = topics.map((topic, index) => ({
    label: topic,
    data: series.events[topic],
    borderColor: COLORS[index % COLORS.length],
    backgroundColor: COLORS[index % COLORS.length],
    pointRadius: 0,
    tension: 0.2,
  }));
  const labels = series.minutes.map(minuteLabel);
  if (!eventsChart) {
    eventsChart = new window.Chart(document.getElementById("events-chart"), {
      type: "line",
      data: { labels, datasets },
      options: { animation: false, responsive: true, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
  } else {
    eventsChart.data.labels = labels;
    eventsChart.data.datasets = datasets;
    eventsChart.update();
  }
  const dlqTopics = Object.keys(series.dead_letters_open);
  const dlqData = dlqTopics.map((topic) => series.dead_letters_open[topic]);
  if (!dlqChart) {
    dlqChart = new window.Chart(document.getElementById("dlq-chart"), {
      type: "bar",
      data: { labels: dlqTopics, datasets: [{ label: "open dead letters", data: dlqData, backgroundColor: "#b3261e" }] },
      options: { animation: false, responsive: true, plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
  } else {
    dlqChart.data.labels = dlqTopics;
    dlqChart.data.datasets[0].data = dlqData;
    dlqChart.update();
  }
}

async function refresh() {
  try {
    const response = await fetch("/dashboard/series/", { headers: { Accept: "application/json" } });
    if (response.ok) draw(await response.json());
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
