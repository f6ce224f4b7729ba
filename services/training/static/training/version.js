/* The version page: loss curves (live while training), metrics toggles, PR curves with a threshold
   slider, confusion-matrix shading and the playground. Data comes from the page (json_script) and the API. */
(function () {
  "use strict";

  var data = JSON.parse(document.getElementById("version-data").textContent);
  var api = JSON.parse(document.getElementById("version-api").textContent);

  function fmt(value, digits) {
    return value === null || value === undefined ? "—" : Number(value).toFixed(digits === undefined ? 3 : digits);
  }

  /* --- loss curves --------------------------------------------------------------------------------- */
  function drawLoss(epochs) {
    var container = document.getElementById("loss-chart");
    if (!container) { return; }
    var byCandidate = {};
    (epochs || []).forEach(function (e) {
      var key = e.candidate || "model";
      (byCandidate[key] = byCandidate[key] || []).push(e);
    });
    var candidates = Object.keys(byCandidate);
    var series = [];
    candidates.forEach(function (name, i) {
      var color = ArbiterCharts.palette[i % ArbiterCharts.palette.length];
      var prefix = candidates.length > 1 ? name + ": " : "";
      var rows = byCandidate[name];
      series.push({ name: prefix + "training loss", color: color,
        points: rows.filter(function (e) { return e.train_loss !== null && e.train_loss !== undefined; })
          .map(function (e) { return [e.epoch, e.train_loss]; }) });
      series.push({ name: prefix + "validation loss", color: color, dashed: true,
        points: rows.filter(function (e) { return e.valid_loss !== null && e.valid_loss !== undefined; })
          .map(function (e) { return [e.epoch, e.valid_loss]; }) });
    });
    ArbiterCharts.line(container, {
      title: "Loss per epoch", series: series, x: { label: "epoch", integer: true },
      y: { label: "loss", min: 0 }, empty: "The first epoch's losses appear here when it ends."
    });
  }
  drawLoss(data.epochs);

  /* --- live progress while the run is queued or running ----------------------------------------------
     htmx polls the progress partial into #progress-live (see _progress.html; the server reloads the page once
     the run ends); each swap brings the epochs so far, and the loss chart is updated in place. */
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target.id !== "progress-live") { return; }
    var epochs = document.getElementById("progress-epochs");
    if (epochs) { drawLoss(JSON.parse(epochs.textContent)); }
  });

  /* --- per head / per class toggle ----------------------------------------------------------------- */
  document.querySelectorAll("[data-metrics-view]").forEach(function (button) {
    button.addEventListener("click", function () {
      document.querySelectorAll("[data-metrics-view]").forEach(function (b) {
        var on = b === button;
        b.setAttribute("aria-pressed", on ? "true" : "false");
        document.getElementById(b.getAttribute("data-metrics-view")).hidden = !on;
      });
    });
  });

  /* --- confusion matrices: shade each cell by its share of the true class ---------------------------- */
  document.querySelectorAll(".confusion-matrix tbody tr").forEach(function (row) {
    var cells = row.querySelectorAll("td");
    var total = 0;
    cells.forEach(function (c) { total += Number(c.getAttribute("data-count")); });
    cells.forEach(function (c) {
      var share = total ? Number(c.getAttribute("data-count")) / total : 0;
      c.style.setProperty("--v", share.toFixed(3));
      if (share > 0.55) { c.classList.add("strong"); }
      c.title += " (" + Math.round(share * 100) + "% of true " + row.querySelector("th").textContent + ")";
    });
  });

  /* --- PR curves and the threshold slider ---------------------------------------------------------- */
  function pointAt(curve, threshold) {
    // The curve runs by threshold, high to low; a text is flagged when its score >= threshold, so the
    // operating point is the lowest curve threshold that is still >= the slider.
    var best = null;
    curve.forEach(function (p) { if (p.threshold >= threshold - 1e-9) { best = p; } });
    return best;
  }

  document.querySelectorAll(".head-card").forEach(function (card) {
    var head = card.getAttribute("data-head");
    var metrics = data.evaluation.heads[head];
    var chosen = (data.thresholds || {})[head] || {};
    var select = card.querySelector(".pr-label");
    var slider = card.querySelector(".threshold");
    var chart = card.querySelector(".pr-chart");
    var readout = card.querySelector(".threshold-readout");

    function render() {
      var label = select.value;
      var m = metrics.per_label[label];
      var curve = m.pr_curve || [];
      var t = Number(slider.value);
      var at = pointAt(curve, t);
      ArbiterCharts.line(chart, {
        title: "Precision-recall curve of " + label,
        series: [{ name: label, points: curve.slice().reverse().map(function (p) { return [p.recall, p.precision]; }) }],
        x: { min: 0, max: 1, label: "recall" }, y: { min: 0, max: 1, label: "precision" },
        marker: at ? { x: at.recall, y: at.precision, label: "t = " + fmt(t, 2) } : null,
        empty: "No " + label + " rows among the evaluated rows, so there is no curve."
      });
      var f1 = at && (at.precision + at.recall) ? 2 * at.precision * at.recall / (at.precision + at.recall) : null;
      var parts = [
        "<span>At <strong>" + fmt(t, 2) + "</strong>:</span>",
        "<span class='pill'>precision " + (at ? fmt(at.precision) : "—") + "</span>",
        "<span class='pill'>recall " + (at ? fmt(at.recall) : "0.000") + "</span>",
        "<span class='pill'>F1 " + fmt(f1) + "</span>"
      ];
      readout.innerHTML = parts.join(" ");
      var best = m.thresholds && m.thresholds.best_f1;
      var target = m.thresholds && m.thresholds.target_precision;
      [[best, "best F1"], [target, "target precision"]].forEach(function (pair) {
        if (!pair[0]) { return; }
        var jump = document.createElement("button");
        jump.type = "button";
        jump.className = "link small";
        jump.textContent = pair[1] + " at " + fmt(pair[0].threshold, 2);
        jump.addEventListener("click", function () { slider.value = pair[0].threshold; render(); });
        readout.appendChild(jump);
      });
      var note = document.createElement("span");
      note.className = "muted small";
      note.textContent = metrics.multi_label
        ? "This version flags " + label + " at " + fmt(chosen[label] !== undefined ? chosen[label] : 0.5, 2) + "."
        : "This version picks the class with the highest score; the slider shows what a threshold would give.";
      readout.appendChild(note);
    }

    function reset() {
      var label = select.value;
      // Multi-class heads decide by argmax (stored as threshold 0): start the slider at 0.5 instead.
      var start = metrics.multi_label && chosen[label] !== undefined ? chosen[label] : 0.5;
      slider.value = start;
      render();
    }
    select.addEventListener("change", reset);
    slider.addEventListener("input", render);
    reset();
  });

  /* --- playground (the inference service's API) ---------------------------------------------------- */
  var form = document.getElementById("playground-form");
  if (form) {
    var results = document.getElementById("playground-results");
    var errorBox = document.getElementById("playground-error");
    var free = document.getElementById("free-queries");
    // An image model's playground: an uploaded or pasted image travels as a data: URI, or a URL as given.
    var imageKind = form.dataset.kind === "image";
    // A policy's: a text, an image, or both read together as one input.
    var bothKind = form.dataset.kind === "multimodal";
    var pasted = null;
    var preview = document.getElementById("playground-preview");
    function show(file) {
      var reader = new FileReader();
      reader.onload = function () { pasted = reader.result; preview.src = pasted; preview.hidden = false; };
      reader.readAsDataURL(file);
    }
    if (imageKind || bothKind) {
      form.image.addEventListener("change", function () { if (form.image.files[0]) { show(form.image.files[0]); } });
      document.addEventListener("paste", function (event) {
        var items = (event.clipboardData && event.clipboardData.files) || [];
        if (items.length && items[0].type.indexOf("image/") === 0) { event.preventDefault(); show(items[0]); }
      });
    }
    function playgroundInput() {
      if (bothKind) {
        var text = form.input.value;
        var picture = form.url.value ? { image_url: form.url.value } : (pasted ? { image_base64: pasted } : null);
        if (!picture) { return text.trim() ? { input: text, shown: text } : null; }
        if (text.trim()) { picture.text = text; }
        return { input: [picture], shown: (text.trim() ? text + " + " : "") + (form.url.value || "the image") };
      }
      if (!imageKind) { return { input: form.input.value, shown: form.input.value }; }
      if (form.url.value) { return { input: [{ image_url: form.url.value }], shown: form.url.value }; }
      if (pasted) { return { input: [{ image_base64: pasted }], shown: "the image" }; }
      return null;
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button");
      var given = playgroundInput();
      if (!given) {
        errorBox.textContent = bothKind ? "Give a text, an image, or both first." : "Choose, paste or link an image first.";
        errorBox.hidden = false;
        return;
      }
      button.disabled = true;
      errorBox.hidden = true;
      Arbiter.api(api.playground, { method: "POST", json: { input: given.input } })
        .then(function (body) {
          ArbiterResults.render(results, body.results, [given.shown]);
          if (body.quota) {
            free.textContent = body.quota.free === null
              ? "Unlimited playground queries on this plan"
              : body.quota.remaining + " of " + body.quota.free + " free queries left for this model";
          }
        })
        .catch(function (error) {
          errorBox.textContent = error.status === 404
            ? "This version is not available to the playground yet: it appears a few seconds after training ends."
            : error.message;
          errorBox.hidden = false;
        })
        .then(function () { button.disabled = false; });
    });
  }
})();
