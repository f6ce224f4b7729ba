/* The deployment page: draw its usage and try it with the session's access. (Waiting for it to go live is
   htmx polling the page's status partial.) */
(function () {
  "use strict";

  var api = JSON.parse(document.getElementById("deployment-api").textContent);
  var usage = JSON.parse(document.getElementById("usage-data").textContent);

  ArbiterCharts.columns(document.getElementById("usage-chart"), {
    title: "Requests per day", categories: usage.days,
    series: usage.series.map(function (s) { return { name: s.name, values: s.values.map(function (v) { return v.requests; }) }; }),
    x: { format: function (day) { return day.slice(5); } }, y: { label: "requests" },
    empty: "No requests in the last 30 days.", height: 200
  });

  var form = document.getElementById("try-form");
  if (form) {
    var results = document.getElementById("try-results");
    var errorBox = document.getElementById("try-error");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var texts = form.inputs.value.split("\n").map(function (t) { return t.trim(); }).filter(Boolean);
      if (!texts.length) { return; }
      var button = form.querySelector("button");
      button.disabled = true;
      errorBox.hidden = true;
      Arbiter.api(api.classify, { method: "POST", json: { inputs: texts } })
        .then(function (body) { ArbiterResults.render(results, body.results, texts); })
        .catch(function (error) { errorBox.textContent = error.message; errorBox.hidden = false; })
        .then(function () { button.disabled = false; });
    });
  }
})();
