// The run page: the curves are SVG drawn by recthinker; this only filters metrics by name and
// hides or shows the PNGs beside them.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("data").textContent);
  var filter = document.getElementById("filter");
  var png = document.getElementById("show-png");
  function apply() {
    var q = filter.value.toLowerCase();
    Array.prototype.forEach.call(document.querySelectorAll("section.metric, #summary tr[data-metric]"), function (n) {
      n.hidden = q !== "" && n.getAttribute("data-metric").toLowerCase().indexOf(q) < 0;
    });
    document.body.classList.toggle("no-png", !png.checked);
  }
  filter.addEventListener("input", apply);
  png.addEventListener("change", apply);
  apply();
  document.body.setAttribute("data-metrics", String(DATA.metrics.length));
  document.body.setAttribute("data-ready", "1");
})();
