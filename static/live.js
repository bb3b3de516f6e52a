// Shipgate's live pages, a progressive enhancement: without JavaScript the pages reload
// themselves (<noscript> refresh); with it, this follows the page's server-sent events and,
// when something changed, fetches the page again and swaps its [data-live] regions in place.
// A region the person is working in (focus inside, an open confirm step, typed text) is left
// alone until they are done, so an update never eats a half-written comment.
(function () {
  "use strict";
  var main = document.querySelector("[data-live-source]");
  if (!main || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var source = null;
  var busy = false;
  var again = false;
  document.documentElement.setAttribute("data-live", "connecting");

  function inUse(region) {
    if (region.contains(document.activeElement) && document.activeElement !== document.body) return true;
    if (region.querySelector("details[open]")) return true;
    var fields = region.querySelectorAll("textarea, input[type=text]");
    for (var i = 0; i < fields.length; i++) if (fields[i].value) return true;
    return false;
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) throw new Error("status " + response.status);
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (region) {
          var next = region.id && fresh.getElementById(region.id);
          if (!next || next.innerHTML === region.innerHTML || inUse(region)) return;
          region.innerHTML = next.innerHTML;
        });
        if (fresh.title) document.title = fresh.title;
        var stamp = document.getElementById("live-status");
        if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function () { /* the next change, or a reload, tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 100); }
      });
  }

  function connect() {
    source = new EventSource(main.getAttribute("data-live-source"));
    source.addEventListener("hello", function () {
      document.documentElement.setAttribute("data-live", "on");
      refresh();
    });
    source.addEventListener("changed", refresh);
    source.onerror = function () {
      document.documentElement.setAttribute("data-live", "reconnecting");
    };
  }

  connect();
  window.addEventListener("pagehide", function () { if (source) source.close(); });
})();
