// The PDU traces of a report folder's cell page, read on demand: the page names its
// evidence file (body[data-evidence]); it is loaded with a <script> element (a page
// opened from the disk cannot fetch JSON) when a test with a trace is first opened,
// or at once when one is open already (failures are). Hex dumps are built when opened,
// annotated with the BHS layouts of core.layout (assets/layouts.js).
(function () {
  "use strict";
  var file = document.body.getAttribute("data-evidence");
  var tests = null;
  var loading = false;
  var started = 0;
  var LAYOUTS = window.ISCSI_LAYOUTS || {};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function hexDump(raw) {
    var n = raw.length, shown = Math.min(n, 1024), wrap = el("div", "hexwrap");
    var bytes = [];
    for (var i = 0; i < shown; i++) bytes.push(raw.charCodeAt(i));
    var names = [], legend = [];
    if (n >= 48) {
      var lay = LAYOUTS[String(bytes[0] & 0x3f)] || [];
      lay.forEach(function (f, k) {
        var v = 0, off = f[0], size = f[1], mask = f[2], name = f[3];
        for (var b = off; b < off + size && size <= 6; b++) v = v * 256 + bytes[b];
        if (mask) { var shift = 0; while (!((mask >> shift) & 1)) shift++; v = (v & mask) >> shift; }
        var cls = name === "reserved" ? "f-rsv" : "f" + (k % 6);
        for (var b2 = off; b2 < off + size; b2++) if (!names[b2] || name !== "reserved") names[b2] = [cls, name + " = " + (size > 6 ? "…" : "0x" + v.toString(16))];
        if (name !== "reserved") legend.push([cls, off + (size > 1 ? "–" + (off + size - 1) : ""), name, size > 6 ? "(bytes)" : "0x" + v.toString(16)]);
      });
    }
    var table = el("table", "hexdump");
    for (var r = 0; r < shown; r += 16) {
      var tr = el("tr"), th = el("th", null, ("000" + r.toString(16)).slice(-4));
      th.scope = "row";
      var td = el("td", "bytes"), asc = "";
      for (var j = r; j < Math.min(r + 16, shown); j++) {
        var nm = names[j] || (j >= 48 ? ["f-data", "data segment"] : ["", ""]);
        var s = el("span", nm[0], ("0" + bytes[j].toString(16)).slice(-2));
        s.title = "byte " + j + (nm[1] ? ": " + nm[1] : "");
        td.appendChild(s);
        td.appendChild(document.createTextNode(" "));
        asc += bytes[j] >= 32 && bytes[j] < 127 ? String.fromCharCode(bytes[j]) : "·";
      }
      tr.appendChild(th); tr.appendChild(td); tr.appendChild(el("td", "ascii", asc));
      table.appendChild(tr);
    }
    wrap.appendChild(table);
    if (n > shown) wrap.appendChild(el("p", "muted", "first " + shown + " of " + n + " bytes shown"));
    if (legend.length) {
      var ul = el("ul", "fields");
      legend.forEach(function (f) {
        var li = el("li");
        li.appendChild(el("span", "sw " + f[0]));
        li.appendChild(el("span", "muted", "[" + f[1] + "] "));
        li.appendChild(document.createTextNode(f[2] + " "));
        li.appendChild(el("code", null, f[3]));
        ul.appendChild(li);
      });
      wrap.appendChild(ul);
    }
    return wrap;
  }

  function render(slot) {
    if (slot.getAttribute("data-rendered")) return;
    var pdus = tests[slot.getAttribute("data-test")];
    if (!pdus) return;
    slot.setAttribute("data-rendered", "1");
    var table = el("table", "trace");
    table.appendChild(el("caption", null, "PDU trace (" + pdus.length + ")"));
    var head = el("tr");
    ["t (s)", "dir", "PDU", "summary"].forEach(function (h) { var th = el("th", null, h); th.scope = "col"; head.appendChild(th); });
    var thead = el("thead"); thead.appendChild(head); table.appendChild(thead);
    var body = el("tbody");
    pdus.forEach(function (p) {
      var it = p.direction === "i->t";
      var tr = el("tr", "pdu d-" + (it ? "it" : "ti"));
      tr.appendChild(el("td", "num", typeof p.time === "number" ? p.time.toFixed(3) : ""));
      tr.appendChild(el("td", "dir", it ? "I → T" : "I ← T"));
      tr.appendChild(el("td", "op", p.opcode));
      var sum = el("td", "sum", p.summary || "");
      if (p.note) sum.appendChild(el("div", "pdu-note", p.note));
      if (p.b64) {
        var d = el("details", "hex");
        var raw = atob(p.b64);
        d.appendChild(el("summary", null, "hex · " + raw.length + " bytes"));
        d.addEventListener("toggle", function () {
          if (d.open && !d.getAttribute("data-built")) { d.setAttribute("data-built", "1"); d.appendChild(hexDump(raw)); }
        });
        sum.appendChild(d);
      }
      tr.appendChild(sum);
      body.appendChild(tr);
    });
    table.appendChild(body);
    slot.textContent = "";
    slot.appendChild(table);
  }

  function renderOpen() {
    document.querySelectorAll("li.test > details[open] .trace-slot").forEach(render);
  }

  window.iscsiEvidence = function (data) {
    // a PDU is an array in the order of data.fields (report/model.py EVIDENCE_FIELDS)
    var fields = data.fields || [];
    tests = {};
    Object.keys(data.tests || {}).forEach(function (id) {
      tests[id] = data.tests[id].map(function (v) {
        var p = {};
        fields.forEach(function (f, i) { p[f] = v[i]; });
        return p;
      });
    });
    renderOpen();
    document.documentElement.setAttribute("data-evidence-ms", String(Math.round(performance.now() - started)));
  };

  function load() {
    if (loading || !file) return;
    loading = true;
    started = performance.now();
    var s = document.createElement("script");
    s.src = file;
    s.onerror = function () {
      document.querySelectorAll(".trace-slot").forEach(function (slot) {
        slot.textContent = "The evidence file " + file + " could not be read.";
      });
    };
    document.body.appendChild(s);
  }

  document.querySelectorAll("li.test > details").forEach(function (d) {
    d.addEventListener("toggle", function () {
      if (!d.open) return;
      var slot = d.querySelector(".trace-slot");
      if (!slot) return;
      if (tests) render(slot); else load();
    });
  });
  // a failure open by default, or a link to one test (script.js opens it): read now,
  // while the page loads, so the trace is there when it has
  var linked = document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (document.querySelector("li.test > details[open] .trace-slot") ||
      (linked && linked.querySelector(".trace-slot"))) load();
  window.addEventListener("hashchange", function () { if (tests) renderOpen(); });
})();
