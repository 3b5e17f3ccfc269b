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
