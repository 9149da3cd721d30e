// Any uncaught error is counted in the data-js-errors attribute of <html> and listed in
// #js-errors, so a headless test (and a reader) sees a page that broke.
(function () {
  "use strict";
  var count = 0;
  function report(text) {
    count += 1;
    document.documentElement.setAttribute("data-js-errors", String(count));
    var box = document.getElementById("js-errors");
    if (box) {
      box.hidden = false;
      box.textContent += text + "\n";
    }
  }
  window.addEventListener("error", function (e) {
    report("error: " + (e.message || e.type) + " (" + (e.filename || "") + ":" + (e.lineno || 0) + ")");
  });
  window.addEventListener("unhandledrejection", function (e) {
    report("unhandled rejection: " + String(e.reason));
  });
})();
