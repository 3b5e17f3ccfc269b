// AI Spine console: small behaviours htmx does not cover. No eval, no inline handlers.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // "select all" checkboxes: <input type="checkbox" data-select-all="name">
  document.body.addEventListener("change", (event) => {
    const box = event.target;
    if (!(box instanceof HTMLInputElement) || !box.dataset.selectAll) return;
    for (const other of document.querySelectorAll(`input[type=checkbox][name="${box.dataset.selectAll}"]`)) {
      other.checked = box.checked;
    }
  });
});
// executions: the list's "created from/to" are the browser's local times; the server
// converts them to UTC with this offset (minutes, as getTimezoneOffset gives it)
document.addEventListener("DOMContentLoaded", () => {
  for (const field of document.querySelectorAll("input[data-tz-offset]")) {
    field.value = String(new Date().getTimezoneOffset());
  }
});
// live regions: the element holding the SSE connection says whether it is connected
// (data-live="open" | "retrying" | "closed"); the CSS shows it, tests wait for it
for (const [event, state] of [["htmx:sseOpen", "open"], ["htmx:sseError", "retrying"], ["htmx:sseClose", "closed"]]) {
  document.addEventListener(event, (e) => {
    if (e.target instanceof HTMLElement && e.target.hasAttribute("sse-connect")) e.target.dataset.live = state;
  });
}
