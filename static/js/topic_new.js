// The new-topic form: the name is checked as it is typed, by the server's own naming rule
// (the form's data-name-check URL answers {"ok", "message"}), so the page and the server never
// disagree. The server checks everything again when the form is sent.

const form = document.getElementById("topic-new");
const input = document.getElementById("id_name");
const said = document.getElementById("name-check");
const WAIT_MS = 250; // after the last keystroke: one question per pause, not one per key

if (form && input && said) {
  const described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  if (!described.includes(said.id)) described.push(said.id);
  input.setAttribute("aria-describedby", described.join(" "));

  let pending = null;
  let asking = null;

  const show = (answer) => {
    said.hidden = false;
    said.textContent = answer.ok ? `✓ ${answer.message}` : answer.message;
    said.classList.toggle("ok", answer.ok);
    said.classList.toggle("bad", !answer.ok);
    if (answer.ok) input.removeAttribute("aria-invalid");
    else input.setAttribute("aria-invalid", "true");
  };

  const check = async () => {
    const name = input.value.trim();
    if (asking) asking.abort(); // an older answer must not overwrite a newer one
    if (!name) {
      said.hidden = true;
      said.textContent = "";
      return;
    }
    asking = new AbortController();
    const url = `${form.dataset.nameCheck}?name=${encodeURIComponent(name)}`;
    try {
      const response = await fetch(url, { signal: asking.signal, headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`the name check answered ${response.status}`);
      const answer = await response.json();
      if (answer.name === name) show(answer);
    } catch (error) {
      if (error.name === "AbortError") return;
      said.hidden = false;
      said.textContent = "The name could not be checked now; it is checked when you create the topic.";
      said.classList.remove("ok", "bad");
    }
  };

  input.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(check, WAIT_MS);
  });
  input.addEventListener("blur", () => {
    clearTimeout(pending);
    check();
  });
}
