/* Review pages (templates/reviews/request.html, reviews/version.html, the prompt pages):

   Line comments: every line number of the reviewed version (in a diff or in the numbered
   content) is a link to the comment form anchored on that line. Here a click opens that
   form right under the line instead, like a pull request; it posts as a plain form and
   the page comes back with the new thread under its line.

   Reviewer picker: the "Ask specific reviewers" checkboxes get a search box that hides
   the members who do not match. Without JavaScript the whole list shows. */
(function () {
  "use strict";

  function closeLineForm() {
    var open = document.getElementById("line-comment-row");
    if (open) open.remove();
  }

  document.addEventListener("click", function (event) {
    var cancel = event.target.closest(".line-comment-cancel");
    if (cancel) {
      closeLineForm();
      return;
    }
    var link = event.target.closest("a.line-comment");
    if (!link) return;
    var template = document.getElementById("line-comment-template");
    var row = link.closest("tr");
    if (!template || !row) return; // follow the link: the page's form, anchored there
    event.preventDefault();
    closeLineForm();
    var message = link.getAttribute("data-message");
    var line = link.getAttribute("data-line");
    var formRow = document.createElement("tr");
    formRow.id = "line-comment-row";
    formRow.className = "line-comment-row";
    var cell = document.createElement("td");
    cell.colSpan = row.children.length;
    cell.appendChild(template.content.cloneNode(true));
    formRow.appendChild(cell);
    // Below the line's own threads, like a reply box.
    var after = row;
    while (after.nextElementSibling && after.nextElementSibling.classList.contains("inline-thread-row")) {
      after = after.nextElementSibling;
    }
    after.after(formRow);
    cell.querySelector("[name=message_index]").value = message;
    cell.querySelector("[name=line]").value = line;
    cell.querySelector(".line-comment-where").textContent = "Your comment on message " + message + ", line " + line;
    cell.querySelector("textarea").focus();
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && event.target.closest && event.target.closest("#line-comment-row")) {
      closeLineForm();
    }
  });

  function filterPicker(input) {
    var picker = input.closest("[data-reviewer-picker]");
    var words = input.value.toLowerCase().trim().split(/\s+/).filter(Boolean);
    var shown = 0;
    picker.querySelectorAll("li[data-search]").forEach(function (item) {
      var text = item.getAttribute("data-search");
      var checked = item.querySelector("input:checked");
      var match = !!checked || words.every(function (w) { return text.indexOf(w) >= 0; });
      item.hidden = !match;
      if (match) shown += 1;
    });
    picker.querySelector(".picker-empty").hidden = shown > 0;
  }

  function setUpPickers(root) {
    root.querySelectorAll("[data-reviewer-picker] .picker-search").forEach(function (input) {
      input.hidden = false;
    });
  }

  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches(".picker-search")) filterPicker(event.target);
  });
  // Enter in the search box must not submit the review request.
  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.matches && event.target.matches(".picker-search")) {
      event.preventDefault();
    }
  });
  document.addEventListener("DOMContentLoaded", function () { setUpPickers(document); });
  document.addEventListener("htmx:load", function (event) {
    if (event.detail && event.detail.elt && event.detail.elt.querySelectorAll) setUpPickers(event.detail.elt);
  });
})();
