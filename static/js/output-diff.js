/* The annotator's "Your edit against the original" (templates/reviews/queues/annotate.html):
   redrawn as the reviewer edits the output, a word diff like the server's
   (apps/reviews/edits.py word_diff): deleted words struck through, inserted underlined.
   The server renders the same diff when the page loads; this only keeps it live. */
(function () {
  "use strict";

  var MAX_TOKENS = 4000; // beyond this the quadratic table is not worth it: the server's diff stays

  function tokens(text) {
    return text.match(/\s+|[^\s]+/g) || [];
  }

  function diff(a, b) {
    var n = a.length, m = b.length, i, j;
    var table = [];
    for (i = 0; i <= n; i++) table.push(new Uint32Array(m + 1));
    for (i = n - 1; i >= 0; i--) {
      for (j = m - 1; j >= 0; j--) {
        table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
      }
    }
    var out = [];
    function push(kind, text) {
      var last = out[out.length - 1];
      if (last && last[0] === kind) last[1] += text; else out.push([kind, text]);
    }
    i = 0; j = 0;
    while (i < n && j < m) {
      if (a[i] === b[j]) { push("equal", a[i]); i++; j++; }
      else if (table[i + 1][j] >= table[i][j + 1]) { push("delete", a[i]); i++; }
      else { push("insert", b[j]); j++; }
    }
    while (i < n) { push("delete", a[i]); i++; }
    while (j < m) { push("insert", b[j]); j++; }
    return out;
  }

  function render(section, edited) {
    var original = section.querySelector("template[data-original]").content.textContent;
    var body = section.querySelector("[data-diff-body]");
    var a = tokens(original), b = tokens(edited);
    if (a.length > MAX_TOKENS || b.length > MAX_TOKENS) return;
    body.textContent = "";
    if (original === edited) {
      var note = document.createElement("p");
      note.className = "muted small";
      note.textContent = "Unchanged: edit the output above to correct it.";
      body.appendChild(note);
      return;
    }
    var p = document.createElement("p");
    p.className = "rq-diff-text";
    diff(a, b).forEach(function (part) {
      if (part[0] === "equal") { p.appendChild(document.createTextNode(part[1])); return; }
      var el = document.createElement(part[0] === "insert" ? "ins" : "del");
      var hint = document.createElement("span");
      hint.className = "skip";
      hint.textContent = part[0] === "insert" ? "inserted: " : "deleted: ";
      el.appendChild(hint);
      el.appendChild(document.createTextNode(part[1]));
      p.appendChild(el);
    });
    body.appendChild(p);
  }

  document.addEventListener("input", function (event) {
    var editor = event.target;
    if (!editor.matches || !editor.matches("[data-output-editor]")) return;
    var form = editor.closest("form");
    var section = form && form.querySelector("[data-output-diff]");
    if (section) render(section, editor.value);
  });
})();
