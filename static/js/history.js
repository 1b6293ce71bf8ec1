// The history filter's field picker: choosing a field adds "field = " as a new condition line
// and puts the cursor after it, so the value is what is left to type.

const picker = document.getElementById("field-picker");
if (picker) {
  picker.addEventListener("change", () => {
    const where = document.getElementById(picker.dataset.target);
    if (!where || !picker.value) return;
    const lines = where.value.replace(/\s+$/, "");
    where.value = `${lines ? `${lines}\n` : ""}${picker.value} = `;
    picker.value = "";
    where.focus();
    where.setSelectionRange(where.value.length, where.value.length);
  });
}
