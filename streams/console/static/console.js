// riskmon console: the live alerts feed (server-sent events). No framework, no external script.
(function () {
  "use strict";
  var list = document.querySelector("ul.alerts[data-live]");
  if (!list || !window.EventSource) { return; }
  var state = document.getElementById("feed-state");
  var say = function (text) { if (state) { state.textContent = text; } };
  var source = new EventSource("/events/alerts");
  source.onopen = function () { say("connected"); };
  source.onerror = function () { say("reconnecting…"); };
  source.addEventListener("alert", function (event) {
    var data;
    try { data = JSON.parse(event.data); } catch (e) { return; }
    var id = data.alert && data.alert.alert_id;
    if (!id || list.querySelector('[data-alert-id="' + CSS.escape(id) + '"]')) { return; }
    var empty = list.querySelector("li.empty");
    if (empty) { empty.remove(); }
    var holder = document.createElement("ul");
    holder.innerHTML = data.html;  // rendered and escaped by the server
    var item = holder.firstElementChild;
    if (!item) { return; }
    item.classList.add("fresh");
    list.insertBefore(item, list.firstChild);
    var counts = document.getElementById("alert-counts");
    var counter = document.querySelector('[data-count="' + CSS.escape(data.alert.rule) + '"]');
    if (counter) {
      counter.textContent = (parseInt(counter.textContent.replace(/,/g, ""), 10) + 1).toLocaleString("en");
    } else if (counts) {  // a rule not seen before: add its count
      var span = document.createElement("span");
      span.textContent = data.alert.rule + " ";
      var b = document.createElement("b");
      b.setAttribute("data-count", data.alert.rule);
      b.textContent = "1";
      span.appendChild(b);
      counts.appendChild(document.createTextNode(" "));
      counts.appendChild(span);
    }
    while (list.children.length > 500) { list.removeChild(list.lastChild); }
  });
}());
