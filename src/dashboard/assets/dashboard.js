// taskmaster dashboard: live updates. The element marked `data-live` names
// an SSE stream (`data-events`) and the URL of its own HTML (`data-fragment`).
// On each event the fragment is fetched again and swapped in; open <details>
// stay open. Without this script the pages still work, just not live.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (!live || !window.EventSource || !window.fetch) return;
  var announce = document.getElementById("announce");
  var timer = null;
  var again = false;
  function refresh() {
    timer = null;
    var open = Array.prototype.map.call(
      live.querySelectorAll("details[open][id]"), function (d) { return d.id; });
    fetch(live.getAttribute("data-fragment"), {
      credentials: "same-origin", headers: { "Accept": "text/html" }
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (html) {
      live.innerHTML = html;
      open.forEach(function (id) {
        var d = document.getElementById(id);
        if (d) d.open = true;
      });
      live.setAttribute("data-updated", String(Date.now()));
      if (again) { again = false; schedule(); }
    }).catch(function () {});
  }
  function schedule() {
    if (timer) { again = true; return; }
    timer = setTimeout(refresh, 150);
  }
  var src = new EventSource(live.getAttribute("data-events"));
  var opened = false;
  src.addEventListener("open", function () {
    // After a reconnect, catch up on what happened while we were away.
    if (opened) schedule();
    opened = true;
    live.setAttribute("data-connected", "true");
  });
  src.addEventListener("transition", function (e) {
    try {
      var t = JSON.parse(e.data);
      if (announce) {
        announce.textContent = t.kind === "step"
          ? "Step " + t.step + " is " + t.state.replace("_", " ")
          : "Run " + t.run_id + " is " + t.state.replace("_", " ");
      }
    } catch (err) { /* a malformed event only skips the announcement */ }
    schedule();
  });
  src.addEventListener("run_created", schedule);
  src.addEventListener("resync", schedule);
})();
