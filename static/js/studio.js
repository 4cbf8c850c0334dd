/* Behaviour every page shares, kept out of the templates: the Content-Security-Policy
   (apps/core/csp.py) runs no inline script or event handler.

   data-confirm on a form: ask before submitting it (htmx forms use hx-confirm). */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);
})();

// Behaviour every page shares (loaded with defer from base.html; no inline scripts, so a
// strict Content-Security-Policy holds).
//
// Unsaved changes: a form marked data-warn-unsaved asks before the page is left (a link,
// Cancel, closing the tab) once something was typed into it. Submitting the form does not
// ask; a submission that comes back with an error (htmx swaps the form in again) leaves
// the typed text in place and the warning armed.
(function () {
  "use strict";
  var dirty = false;
  var submitting = false;

  function guarded(node) {
    return node && node.closest ? node.closest("form[data-warn-unsaved]") : null;
  }

  document.addEventListener("input", function (event) {
    if (guarded(event.target)) {
      dirty = true;
    }
  });
  document.addEventListener("submit", function (event) {
    if (guarded(event.target)) {
      submitting = true;
    }
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var detail = event.detail || {};
    var config = detail.requestConfig || {};
    if (!guarded(detail.elt) || !config.triggeringEvent || config.triggeringEvent.type !== "submit") {
      return;
    }
    // A saved form answers with HX-Redirect and the page moves on; any other answer (the
    // form again, with its error) keeps what was typed on the page, still unsaved.
    if (!(detail.xhr && detail.xhr.getResponseHeader("HX-Redirect"))) {
      submitting = false;
    }
  });
  window.addEventListener("beforeunload", function (event) {
    if (dirty && !submitting) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
})();

// On a narrow screen the squad navigation is one row that scrolls sideways: bring the
// current area into view (without scrolling the page itself).
(function () {
  "use strict";
  var nav = document.getElementById("squad-nav");
  var current = nav && nav.querySelector("[aria-current=page]");
  if (current && nav.scrollWidth > nav.clientWidth) {
    nav.scrollLeft = current.offsetLeft - (nav.clientWidth - current.offsetWidth) / 2;
  }
})();
