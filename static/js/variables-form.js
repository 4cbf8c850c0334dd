/* The variables form built from the input schema (templates/prompts/_variables_form.html):
   its fields and the JSON textarea it names (data-json) stay in step. Typing in a field
   rewrites the JSON (and fires "input" on it, so the editor's preview refreshes); editing
   the JSON by hand refills the fields. Values keep their JSON types: numbers from number
   fields, enum options as their JSON values, objects and arrays parsed from JSON fields.
   A value that does not parse is written as typed, so the server names the problem. */
(function () {
  "use strict";
  if (window.studioVariablesForm) return; // loaded once per page
  window.studioVariablesForm = true;

  var writing = false;

  function jsonBox(form) {
    return document.getElementById(form.getAttribute("data-json"));
  }

  function parse(box) {
    try {
      var value = JSON.parse(box.value.trim() || "{}");
      return value && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch (e) {
      return null;
    }
  }

  function read(input) {
    var kind = input.getAttribute("data-kind");
    if (kind === "boolean") return { set: true, value: input.checked };
    var raw = input.value;
    if (raw === "") return { set: false };
    if (kind === "integer" || kind === "number") {
      var n = Number(raw);
      return { set: true, value: isFinite(n) ? n : raw };
    }
    if (kind === "select" || kind === "json") {
      try { return { set: true, value: JSON.parse(raw) }; } catch (e) { return { set: true, value: raw }; }
    }
    return { set: true, value: raw };
  }

  function show(input, value, present) {
    var kind = input.getAttribute("data-kind");
    if (kind === "boolean") { input.checked = present && value === true; return; }
    if (!present) { input.value = ""; return; }
    if (kind === "select") { input.value = JSON.stringify(value); return; }
    if (kind === "json") { input.value = JSON.stringify(value, null, 2); return; }
    input.value = typeof value === "string" ? value : JSON.stringify(value);
  }

  function fill(form) {
    var values = parse(jsonBox(form));
    form.querySelector(".var-json-note").hidden = values !== null;
    if (values === null) return;
    form.querySelectorAll("[data-var]").forEach(function (input) {
      var name = input.getAttribute("data-var");
      show(input, values[name], Object.prototype.hasOwnProperty.call(values, name));
    });
  }

  function write(form, input) {
    var box = jsonBox(form);
    var values = parse(box);
    if (values === null) values = {};
    var result = read(input);
    var name = input.getAttribute("data-var");
    if (result.set) values[name] = result.value; else delete values[name];
    box.value = JSON.stringify(values, null, 2);
    form.querySelector(".var-json-note").hidden = true;
    writing = true;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    writing = false;
  }

  function setUp(root) {
    var forms = root.matches && root.matches("[data-variables-form]") ? [root] : root.querySelectorAll("[data-variables-form]");
    forms.forEach(function (form) {
      if (!jsonBox(form)) return;
      form.hidden = false;
      fill(form);
    });
  }

  function onEdit(event) {
    var input = event.target.closest && event.target.closest("[data-var]");
    if (input) {
      var form = input.closest("[data-variables-form]");
      if (form) write(form, input);
      return;
    }
    if (writing) return;
    document.querySelectorAll("[data-variables-form]").forEach(function (form) {
      if (jsonBox(form) === event.target) fill(form);
    });
  }

  document.addEventListener("input", onEdit);
  document.addEventListener("change", function (event) {
    if (event.target.closest && event.target.closest("[data-var]")) onEdit(event);
  });
  document.addEventListener("DOMContentLoaded", function () { setUp(document); });
  document.addEventListener("htmx:load", function (event) {
    if (event.detail && event.detail.elt && event.detail.elt.querySelectorAll) setUp(event.detail.elt);
  });
})();
