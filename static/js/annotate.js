/* The annotator (templates/reviews/queues/annotate.html): keyboard shortcuts and the time
   spent on an item.

   Time spent: from when an item's panel is shown (page load or htmx swap) until its form
   is submitted, written into the form's seconds_spent field just before htmx reads it.
   Shortcuts (documented on the page): digits set a score, a/r approve/reject, e focuses
   the output editor, j/k next/previous item. None fires while typing in a text field;
   Escape leaves the field. */
(function () {
  "use strict";

  var MAX_SECONDS = 24 * 3600;
  var BUTTONS = { a: "[data-verdict=approve]", r: "[data-verdict=reject]", j: "#next-item", k: "#previous-item" };
  var NOT_TYPED = ["radio", "checkbox", "button", "submit", "reset", "range", "color", "file"];
  var shownAt = performance.now();

  function isTyping(el) {
    if (!el || el === document.body) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    return el.tagName === "INPUT" && NOT_TYPED.indexOf(el.type) < 0;
  }

  // A new item panel: restart the clock and move focus to its heading, so that keys go
  // to the page (not to a control that the swap removed) and screen readers announce it.
  document.addEventListener("htmx:load", function (event) {
    var el = event.detail.elt;
    if (!el.matches || !el.matches("[data-annotate-panel]")) return;
    shownAt = performance.now();
    var heading = el.querySelector("[tabindex='-1']");
    if (heading) heading.focus();
  });

  // Capture phase: runs before htmx's own submit handler collects the form's values.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches || !form.matches("[data-annotate-form]")) return;
    var seconds = Math.round((performance.now() - shownAt) / 1000);
    form.querySelector("[data-seconds]").value = String(Math.min(MAX_SECONDS, Math.max(0, seconds)));
  }, true);

  // The score a digit goes to: the one holding focus if it has keyed choices, else the
  // first numeric or categorical score that has them.
  function setScore(panel, digit) {
    var active = document.activeElement;
    var fieldset = active && active.closest ? active.closest("[data-score]") : null;
    if (!fieldset || !panel.contains(fieldset) || !fieldset.querySelector("[data-key]")) {
      fieldset = panel.querySelector("[data-score][data-digits]");
    }
    var choice = fieldset && fieldset.querySelector("input[data-key='" + digit + "']");
    if (!choice) return false;
    choice.checked = true;
    choice.focus();
    choice.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    var panel = document.querySelector("[data-annotate-panel]");
    if (!panel) return;
    var active = document.activeElement;
    if (isTyping(active)) {
      if (event.key === "Escape" && panel.contains(active)) active.blur();
      return;
    }
    if (event.repeat) return;
    var key = event.key;
    if (/^[0-9]$/.test(key)) {
      if (setScore(panel, key)) event.preventDefault();
      return;
    }
    if (key === "e") {
      var editor = panel.querySelector("[data-output-editor]");
      if (editor) {
        event.preventDefault();  // focus only: the "e" is not typed into the output
        editor.focus();
      }
      return;
    }
    var target = BUTTONS[key] && panel.querySelector(BUTTONS[key]);
    if (target) {
      event.preventDefault();
      target.click();
    }
  });
})();
