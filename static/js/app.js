// Small behaviours of the web UI. Every page works without them; they make it quicker to use.
"use strict";

function onReady(callback) {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", callback);
  else callback();
}

function csrfToken() {
  const headers = document.body.getAttribute("hx-headers");
  try { return JSON.parse(headers)["X-CSRFToken"]; } catch (error) { return ""; }
}

// The deploy form's model select (htmx replaces what depends on the model; see deploy.html). The
// deployment name follows the model's until the person types a name of their own.
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-names-deployment]");
  if (!select) return;
  const name = document.querySelector(select.dataset.namesDeployment);
  const option = select.selectedOptions[0];
  if (!name || !option) return;
  if (name.value === "" || name.value === name.dataset.suggested) {
    name.value = option.dataset.name || "";
    name.dataset.suggested = name.value;
  }
});

// Filters left empty stay out of the URL the catalog pushes to the history (?task=chat, not ?q=&task=chat&…).
document.addEventListener("htmx:configRequest", (event) => {
  const parameters = event.detail.parameters;
  for (const [name, value] of Array.from(parameters.entries ? parameters.entries() : Object.entries(parameters))) {
    if (value === "") parameters.delete ? parameters.delete(name) : delete parameters[name];
  }
});

// A refusal (400) is answered with the part that says what to change (the catalog's results, the model
// page's cost table), so it is swapped in like any answer; htmx leaves 4xx answers out by default. This
// listens on the document because htmx fires beforeSwap on the target, which may be outside the form.
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.xhr.status === 400) {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});

// Forms that ask before doing something that cannot be undone.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});

// Copy buttons: data-copy names the element whose text is copied.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent);
    button.textContent = "Copied";
  } catch (error) {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});

// Tabs (code snippets), with arrow keys as the ARIA pattern has them.
function setUpTabs(root) {
  const tabs = Array.from(root.querySelectorAll('[role="tab"]'));
  function select(tab) {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
    tab.focus();
  }
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      if (event.key === "ArrowRight") select(tabs[(index + 1) % tabs.length]);
      if (event.key === "ArrowLeft") select(tabs[(index - 1 + tabs.length) % tabs.length]);
    });
  }
}

// The playground: send the conversation, show the answer as its tokens stream in.
function setUpPlayground(root) {
  const form = root.querySelector("#chat-form");
  const transcript = root.querySelector("#transcript");
  const prompt = root.querySelector("#prompt");
  const send = root.querySelector("#send");
  const stop = root.querySelector("#stop");
  const problem = root.querySelector("#chat-error");
  const stats = root.querySelector("#chat-stats");
  const history = [];
  let controller = null;
  const FOLD_CHARACTERS = 600;
  const FOLD_LINES = 12;

  function add(role, text) {
    const item = document.createElement("li");
    item.className = "message " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Model";
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = text;
    item.append(who, body);
    if (text.length > FOLD_CHARACTERS || text.split("\n").length > FOLD_LINES) fold(item, body, text);
    transcript.append(item);
    return body;
  }

  // A very long message is shown folded, with a button that unfolds it (and folds it again).
  function fold(item, body, text) {
    body.classList.add("folded");
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "link unfold";
    toggle.setAttribute("aria-expanded", "false");
    const label = `Show all ${text.length.toLocaleString("en")} characters`;
    toggle.textContent = label;
    toggle.addEventListener("click", () => {
      const folded = body.classList.toggle("folded");
      toggle.setAttribute("aria-expanded", String(!folded));
      toggle.textContent = folded ? label : "Fold it";
    });
    item.append(toggle);
  }

  function fail(message) {
    problem.textContent = message;
    problem.hidden = false;
  }

  root.querySelector("#clear").addEventListener("click", () => {
    history.length = 0;
    transcript.replaceChildren();
    stats.textContent = "";
  });
  stop.addEventListener("click", () => controller && controller.abort());
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    problem.hidden = true;
    stats.textContent = "Waiting for the answer…";  // never the previous answer's figures
    history.push({ role: "user", content: text });
    const asked = add("user", text).closest("li");
    prompt.value = "";
    const answer = add("assistant", "");
    answer.classList.add("streaming");
    const system = form.elements.system.value.trim();
    const body = {
      messages: system ? [{ role: "system", content: system }, ...history] : history,
      max_tokens: Number(form.elements.max_tokens.value) || 256,
      temperature: Number(form.elements.temperature.value),
    };
    controller = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    const started = performance.now();
    let firstToken = null;
    let usage = null;
    try {
      const response = await fetch(root.dataset.url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(body),
        signal: controller.signal,
        credentials: "same-origin",
      });
      if (!response.ok) {
        let message = `The request failed (${response.status}).`;
        try { message = (await response.json()).error.message || message; } catch (error) { /* not JSON */ }
        throw new Error(message);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
            const chunk = JSON.parse(line.slice(6));
            if (chunk.error) throw new Error(chunk.error.message);
            if (chunk.usage) usage = chunk.usage;
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (delta && delta.content) {
              if (firstToken === null) firstToken = performance.now();
              answer.textContent += delta.content;
            }
          }
        }
      }
      history.push({ role: "assistant", content: answer.textContent });
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      const ttft = firstToken === null ? "–" : Math.round(firstToken - started) + " ms";
      const servedBy = response.headers.get("x-router-deployment");  // a router's choice
      stats.textContent = (servedBy ? `Answered by ${servedBy}. ` : "") +
        `First token after ${ttft}, answer in ${seconds} s` +
        (usage ? `, ${usage.prompt_tokens} prompt and ${usage.completion_tokens} completion tokens.` : ".");
    } catch (error) {
      if (error.name === "AbortError") {
        history.push({ role: "assistant", content: answer.textContent });
        stats.textContent = "Stopped.";
      } else {
        // The failed exchange leaves no trace: its bubbles go, the prompt comes back to send again.
        history.pop();
        asked.remove();
        answer.closest("li").remove();
        if (!prompt.value) prompt.value = text;
        stats.textContent = "";
        fail(error.message + " Your message is back in the box: send it again when ready.");
      }
    } finally {
      answer.classList.remove("streaming");
      controller = null;
      send.disabled = false;
      stop.hidden = true;
      prompt.focus();
    }
  });
}

onReady(() => {
  document.querySelectorAll("select[data-names-deployment]").forEach((select) => {
    const name = document.querySelector(select.dataset.namesDeployment);
    const option = select.selectedOptions[0];
    if (name) name.dataset.suggested = (option && option.dataset.name) || "";
  });
  document.querySelectorAll("[data-tabs]").forEach(setUpTabs);
  document.querySelectorAll("[data-playground]").forEach(setUpPlayground);
});
