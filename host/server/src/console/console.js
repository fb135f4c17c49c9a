// Skiff console: what is live. Pages work without it; it only keeps them current.
// Log text arrives as segments and becomes text nodes: nothing from a log is parsed as HTML.
"use strict";
(function () {
  // A list of runs (the apps page, the runs page): fetch the page again when the runs change.
  function refresh(el) {
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById(el.id);
        if (fresh) el.replaceChildren.apply(el, Array.from(fresh.childNodes));
      });
  }

  var live = document.getElementById("live");
  if (live && live.dataset.watch) {
    var watch = new EventSource(live.dataset.watch);
    watch.addEventListener("changed", function () { refresh(live); });
  }
  // The run page: its jobs and steps change, then it ends.
  if (live && live.dataset.events) {
    var runEvents = new EventSource(live.dataset.events);
    var pending = null;
    var again = function () {
      if (pending) return;
      pending = setTimeout(function () { pending = null; refresh(live); }, 250);
    };
    runEvents.addEventListener("step", again);
    runEvents.addEventListener("end", function () { runEvents.close(); location.reload(); });
  }

  // A step's log: lines as they come, then the end.
  var log = document.getElementById("log");
  if (log && log.dataset.events) {
    var n = log.children.length;
    var events = new EventSource(log.dataset.events);
    events.addEventListener("line", function (e) {
      var data = JSON.parse(e.data);
      data.lines.forEach(function (segments) {
        n += 1;
        var li = document.createElement("li");
        li.id = "L" + n;
        var a = document.createElement("a");
        a.className = "ln"; a.href = "#L" + n; a.textContent = String(n);
        a.setAttribute("aria-label", "Line " + n);
        var t = document.createElement("span");
        t.className = "t";
        segments.forEach(function (s) {
          var span = document.createElement("span");
          if (s.class) span.className = s.class;
          span.textContent = s.text;
          t.appendChild(span);
        });
        li.appendChild(a); li.appendChild(t);
        filterLine(li);
        log.appendChild(li);
      });
    });
    events.addEventListener("end", function (e) {
      events.close();
      var status = document.getElementById("log-live");
      if (status) status.textContent = "Ended: " + JSON.parse(e.data).status;
    });
  }

  // Search in a log: lines that do not hold the text are hidden.
  var filter = document.getElementById("log-filter");
  function filterLine(li) {
    var q = filter ? filter.value.toLowerCase() : "";
    li.classList.toggle("hidden", q !== "" && li.textContent.toLowerCase().indexOf(q) < 0);
  }
  if (filter && log) {
    filter.addEventListener("input", function () {
      Array.prototype.forEach.call(log.children, filterLine);
    });
  }
  // A line anchor opened directly: scroll it into view once lines are there.
  if (location.hash && /^#L\d+$/.test(location.hash)) {
    var target = document.getElementById(location.hash.slice(1));
    if (target) target.scrollIntoView({ block: "center" });
  }
})();
