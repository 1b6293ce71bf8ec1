// The publish form: add and remove array rows, and switch event type when one is picked.
// Rows are copies of the array's <template>; inputs are named by JSON pointer, so a new
// row only needs its "__index__" replaced by the next free number.

function nextIndex(array) {
  const prefix = array.dataset.array + "/";
  let next = 0;
  for (const input of array.querySelectorAll(":scope > .rows [name]")) {
    const head = input.name.slice(prefix.length).split("/")[0];
    if (input.name.startsWith(prefix) && /^\d+$/.test(head)) next = Math.max(next, Number(head) + 1);
  }
  return next;
}

function addRow(array) {
  const template = array.querySelector(":scope > template.row-template");
  const index = nextIndex(array);
  // Names hold the JSON pointer; ids hold it with every other character made "-".
  const pointer = [array.dataset.array + "/__index__", array.dataset.array + "/" + index];
  const asId = (text) => text.replace(/[^A-Za-z0-9_-]/g, "-");
  const swaps = [pointer, pointer.map(asId)];
  const rename = (value) => swaps.reduce((text, [from, to]) => text.split(from).join(to), value);
  const row = template.content.firstElementChild.cloneNode(true);
  for (const element of row.querySelectorAll("[name], [id], [for], [aria-describedby], [data-array]")) {
    for (const attribute of ["name", "id", "for", "aria-describedby", "data-array"]) {
      const value = element.getAttribute(attribute);
      if (value) element.setAttribute(attribute, rename(value));
    }
  }
  // A nested array's template belongs to this row too: its inputs get this row's number.
  for (const nested of row.querySelectorAll("template")) {
    nested.innerHTML = rename(nested.innerHTML);
  }
  array.querySelector(":scope > .rows").appendChild(row);
  const first = row.querySelector("input, select, textarea");
  if (first) first.focus();
}

// Removing a row keeps the keyboard in the array: on the next row, the previous one, or "Add a row".
function removeRow(row) {
  const array = row.closest("fieldset.array");
  const neighbour = row.nextElementSibling || row.previousElementSibling;
  row.remove();
  const target = neighbour ? neighbour.querySelector("input, select, textarea") : array.querySelector(":scope > .add-row");
  if (target) target.focus();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.classList.contains("add-row")) {
    addRow(button.closest("fieldset.array"));
  } else if (button.classList.contains("remove-row")) {
    removeRow(button.closest("li.row"));
  }
});

// A refused form opens on its error summary, whose links lead to the fields.
const summary = document.getElementById("error-summary");
if (summary) summary.focus();

for (const select of document.querySelectorAll("select.autosubmit")) {
  select.addEventListener("change", () => select.form.submit());
}
