// A Copy button for text shown once (a new service token): it appears only where the
// clipboard can be written, and says when it copied.

for (const button of document.querySelectorAll("button.copy")) {
  if (!navigator.clipboard) continue;
  button.hidden = false;
  button.addEventListener("click", async () => {
    const text = document.getElementById(button.dataset.copy).textContent.trim();
    const said = document.getElementById("token-copied");
    try {
      await navigator.clipboard.writeText(text);
      said.textContent = "Copied.";
    } catch {
      said.textContent = "The browser refused the clipboard: select the token and copy it.";
    }
  });
}
