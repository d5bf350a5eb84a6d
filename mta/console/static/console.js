// mta console: small progressive enhancements; every page works without them.
"use strict";
(function () {
  // Copy buttons: <button data-copy="ID"> copies the text of element ID.
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent;
    var done = function () {
      button.setAttribute("data-copied", "1");
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; button.removeAttribute("data-copied"); }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { select(source); });
    } else {
      select(source);
      try { document.execCommand("copy"); done(); } catch (e) { /* selected for the user */ }
    }
  });
  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  // Live updates: <table data-stream="URL"> listens to server-sent events.
  //   event "row":   data is a <tr>…</tr> rendered (and escaped) by the server;
  //                  appended to the table's tbody unless a row with its id exists
  //   event "state": data is JSON {"id": element id, "text": new text}; a
  //                  .badge element also takes the new text as its class
  //   event "end":   the stream is over (the message reached a final state)
  function live(table) {
    if (!window.EventSource) return;
    var body = table.tBodies[0] || table.createTBody();
    var source = new EventSource(table.getAttribute("data-stream"));
    table.setAttribute("data-live", "connecting");
    source.addEventListener("open", function () { table.setAttribute("data-live", "open"); });
    source.addEventListener("row", function (ev) {
      var holder = document.createElement("tbody");
      holder.innerHTML = ev.data;
      var row = holder.firstElementChild;
      if (!row || (row.id && document.getElementById(row.id))) return;
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      body.appendChild(row);
    });
    source.addEventListener("state", function (ev) {
      try {
        var change = JSON.parse(ev.data);
        var node = document.getElementById(change.id);
        if (!node) return;
        node.textContent = change.text;
        // A state badge takes its new state's colour too.
        if (node.classList.contains("badge")) {
          node.className = "badge " + String(change.text).replace(/[^a-z_]/g, "");
        }
      } catch (e) { /* ignore a malformed update */ }
    });
    source.addEventListener("end", function () {
      source.close();
      table.setAttribute("data-live", "ended");
    });
  }
  document.querySelectorAll("table[data-stream]").forEach(live);
})();
