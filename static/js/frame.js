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
