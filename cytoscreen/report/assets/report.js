(function () {
  "use strict";
  var body = document.body;
  var errors = 0;
  window.addEventListener("error", function () {
    errors += 1;
    body.setAttribute("data-js-errors", String(errors));
  });
  function cellValue(td) {
    var v = td.getAttribute("data-value");
    return v === null ? td.textContent.trim() : v;
  }
  function compare(x, y) {
    var nx = parseFloat(x), ny = parseFloat(y);
    return (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener("click", function () {
        var tbody = table.tBodies[0];
        var rows = Array.prototype.slice.call(tbody.rows);
        var asc = th.getAttribute("data-sort") !== "asc";
        rows.sort(function (a, b) {
          var c = compare(cellValue(a.cells[i]), cellValue(b.cells[i]));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { tbody.appendChild(r); });
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("data-sort"); });
        th.setAttribute("data-sort", asc ? "asc" : "desc");
      });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("svg.heatmap"), function (svg) {
    var info = document.getElementById("info-" + svg.id);
    if (!info) { return; }
    svg.addEventListener("mouseover", function (e) {
      var t = e.target;
      if (t && t.getAttribute && t.getAttribute("data-well")) {
        var title = t.querySelector("title");
        info.textContent = title ? title.textContent : t.getAttribute("data-well");
      }
    });
  });
  if (location.hash === "#selftest") {
    // the browser test: hover the first well, sort the first sortable table both ways
    var ok = true;
    var svg = document.querySelector("svg.heatmap");
    if (svg) {
      var rect = svg.querySelector("rect.well");
      rect.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
      var info = document.getElementById("info-" + svg.id);
      ok = ok && info.textContent.indexOf(rect.getAttribute("data-well")) === 0;
    }
    var table = document.querySelector("table.sortable");
    if (table && table.tBodies.length) {
      var th = table.tHead.rows[0].cells[0];
      [1, -1].forEach(function (direction) {
        th.click();
        var rows = table.tBodies[0].rows;
        for (var k = 1; k < rows.length; k += 1) {
          var c = compare(cellValue(rows[k - 1].cells[0]), cellValue(rows[k].cells[0]));
          ok = ok && direction * c <= 0;
        }
      });
      ok = ok && th.getAttribute("data-sort") === "desc";
    }
    body.setAttribute("data-selftest", ok ? "ok" : "failed");
  }
  var external = 0;
  if (window.performance && performance.getEntriesByType) {
    performance.getEntriesByType("resource").forEach(function (r) {
      if (!/^data:/.test(r.name)) { external += 1; }
    });
  }
  body.setAttribute("data-external-requests", String(external));
  body.setAttribute("data-report-ready", errors ? "error" : "ok");
})();
