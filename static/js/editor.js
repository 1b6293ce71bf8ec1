// The schema editor: line numbers beside the textarea (a parse error names its line), kept in
// step as the text changes and scrolls; Tab indents by two spaces instead of leaving the box.

for (const editor of document.querySelectorAll("[data-editor]")) {
  const text = editor.querySelector("textarea");
  const gutter = editor.querySelector(".gutter");
  const number = () => {
    const lines = text.value.split("\n").length;
    gutter.textContent = Array.from({ length: lines }, (_, index) => index + 1).join("\n");
    gutter.scrollTop = text.scrollTop;
  };
  text.addEventListener("input", number);
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  text.addEventListener("keydown", (event) => {
    if (event.key !== "Tab" || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    text.setRangeText("  ", text.selectionStart, text.selectionEnd, "end");
    number();
  });
  number();
}
