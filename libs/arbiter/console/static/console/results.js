/* Renders classification results (the native shape: one entry per head with label, labels, score,
   label_scores and flagged, and a policy's reason or a cascade's decided_by when present) as score bars. Shared by the playground and a deployment's "Try it". */
(function () {
  "use strict";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function head(name, r) {
    var box = el("div", "head-result");
    box.setAttribute("data-head", name);
    var top = el("div", "top");
    top.appendChild(el("strong", "", name));
    var decided = el("span", "");
    var labels = r.labels && r.labels.length ? r.labels : (r.label ? [r.label] : []);
    labels.forEach(function (label) {
      decided.appendChild(el("span", "pill " + (r.flagged ? "bad" : "ok"), label));
      decided.appendChild(document.createTextNode(" "));
    });
    if (!labels.length) { decided.appendChild(el("span", "muted small", "no label")); }
    if (r.flagged) { decided.appendChild(el("span", "pill bad", "flagged")); }
    /* A cascade deployment's heads say who decided them; a policy's decision comes with its reason. */
    if (r.decided_by) { decided.appendChild(el("span", "pill", "decided by " + r.decided_by)); }
    top.appendChild(decided);
    box.appendChild(top);
    if (r.reason) { box.appendChild(el("p", "muted small reason", r.reason)); }
    var scores = r.label_scores || {};
    Object.keys(scores).sort(function (a, b) { return scores[b] - scores[a]; }).forEach(function (label) {
      var row = el("div", "score-row" + (labels.indexOf(label) >= 0 && r.flagged ? " flagged" : ""));
      row.appendChild(el("span", "", label));
      var bar = el("span", "bar");
      var fill = el("span", "");
      fill.style.width = (scores[label] * 100).toFixed(1) + "%";
      bar.appendChild(fill);
      row.appendChild(bar);
      row.appendChild(el("span", "num", scores[label].toFixed(3)));
      box.appendChild(row);
    });
    return box;
  }

  /* results: one result per text; texts: the inputs, shown above their result when there are several. */
  function render(container, results, texts) {
    container.innerHTML = "";
    results.forEach(function (result, i) {
      var group = el("div", "result");
      if (results.length > 1 && texts) { group.appendChild(el("p", "result-text", "“" + texts[i] + "”")); }
      Object.keys(result).forEach(function (name) {
        if (result[name] && typeof result[name] === "object") { group.appendChild(head(name, result[name])); }
      });
      container.appendChild(group);
    });
  }

  window.ArbiterResults = { render: render };
})();
