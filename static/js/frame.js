// Every page's frame on a small screen: the navigation folds behind "Menu", and the filter
// box starts folded (open when it holds an error). Without this script both stay open.

const small = window.matchMedia("(max-width: 700px)");
document.documentElement.classList.add("js");

const toggle = document.querySelector(".menu-toggle");
const nav = document.getElementById("main-nav");
if (toggle && nav) {
  toggle.addEventListener("click", () => {
    const open = nav.classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
}

for (const box of document.querySelectorAll("details.filters-box")) {
  if (small.matches && !box.querySelector(".error")) box.open = false;
}

// A time typed in UTC (2027-01-01 00:00) is also shown in the browser's own zone beside it:
// "= 2027-01-01 00:00 UTC, 19:00 on 31 Dec in New York". The server reads only the UTC text.
const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
const place = zone.split("/").pop().replaceAll("_", " ");
const utcPattern = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?\s*(?:Z|UTC)?$/;

function localTimeSaid(text) {
  const found = utcPattern.exec(text.trim());
  if (!found) return "";
  const [, year, month, day, hour, minute, second] = found.map(Number);
  const moment = new Date(Date.UTC(year, month - 1, day, hour, minute, second || 0));
  if (Number.isNaN(moment.getTime()) || moment.getUTCDate() !== day) return "";
  const clock = moment.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const sameDay = moment.getDate() === day && moment.getMonth() === month - 1;
  const date = sameDay ? "" : ` on ${moment.toLocaleDateString([], { day: "numeric", month: "short" })}`;
  const utc = text.trim().slice(0, 16).replace("T", " ");
  return `= ${utc} UTC, ${clock}${date}${place ? ` in ${place}` : " here"}`;
}

for (const input of document.querySelectorAll("input[data-utc-time]")) {
  const said = document.createElement("span");
  said.className = "local-time help";
  said.setAttribute("aria-live", "polite");
  said.id = `${input.id}-local`;
  input.after(said);
  const show = () => { said.textContent = localTimeSaid(input.value); };
  input.addEventListener("input", show);
  show();
}
