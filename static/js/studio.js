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
