// Progressive enhancement only: without JS every pairing is listed and cells link to them.
(function () {
  "use strict";
  var body = document.body;
  var sections = Array.prototype.slice.call(document.querySelectorAll("section.pairing"));
  var cells = Array.prototype.slice.call(document.querySelectorAll("td.cell[data-pairing]"));
  var toolbar = document.querySelector(".toolbar");
  var showAll = document.getElementById("show-all");
  var onlyProblems = document.getElementById("only-problems");
  if (toolbar) toolbar.hidden = false;

  function anchorOf(cell) {
    var a = cell.querySelector("a.cell-link");
    return a ? a.getAttribute("data-detail") : null;
  }

  function select(id, scroll) {
    var found = false;
    sections.forEach(function (s) {
      var on = s.id === id;
      s.hidden = !on;
      s.classList.toggle("selected", on);
      if (on) {
        found = true;
        // open every area that has tests worth reading
        s.querySelectorAll("details.area").forEach(function (d) { d.open = true; });
      }
    });
    cells.forEach(function (c) { c.classList.toggle("selected", anchorOf(c) === id); });
    if (!found) { clear(); return; }
    if (showAll) showAll.hidden = false;
    if (scroll) {
      var target = document.getElementById(id);
      if (target) target.scrollIntoView({ block: "start" });
    }
  }

  function clear() {
    sections.forEach(function (s) { s.hidden = false; s.classList.remove("selected"); });
    cells.forEach(function (c) { c.classList.remove("selected"); });
    if (showAll) showAll.hidden = true;
  }

  cells.forEach(function (c) {
    var link = c.querySelector("a.cell-link");
    if (!link || !link.getAttribute("data-detail")) return; // a report folder: its own page
    link.addEventListener("click", function (ev) {
      ev.preventDefault();
      var id = anchorOf(c);
      history.replaceState(null, "", "#" + id);
      select(id, true);
    });
  });

  if (showAll) showAll.addEventListener("click", function () {
    history.replaceState(null, "", "#details");
    clear();
  });
  if (onlyProblems) onlyProblems.addEventListener("change", function () {
    body.classList.toggle("only-problems", onlyProblems.checked);
  });

  function fromHash() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (id.indexOf("pair-") === 0) { select(id, true); return; }
    // a link to one test: show its pairing and open it
    if (id.indexOf("t-") === 0) {
      var t = document.getElementById(id);
      var sec = t && t.closest("section.pairing");
      if (sec) {
        select(sec.id, false);
        var d = t.querySelector("details");
        if (d) d.open = true;
        t.scrollIntoView({ block: "start" });
      }
    }
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
  body.classList.add("js");
})();
