/* The console's charts, drawn by Chart.js (vendor/chart.umd.min.js, see vendor/VENDOR.md; no CDN, so the console
   works air-gapped). This file only turns the pages' data into Chart.js configurations in the console's look,
   and gives every chart the text a canvas lacks: an aria-label and a visually hidden table of its numbers.
   Drawing into a container that already holds a chart of the same kind updates it in place (live progress). */
(function () {
  "use strict";

  var style = getComputedStyle(document.documentElement);
  function cssColor(name, fallback) { return style.getPropertyValue(name).trim() || fallback; }
  var PALETTE = [["--c1", "#3246d3"], ["--c2", "#e8590c"], ["--c3", "#0c8599"], ["--c4", "#9c36b5"],
    ["--c5", "#2b8a3e"], ["--c6", "#c2255c"]].map(function (c) { return cssColor(c[0], c[1]); });
  var MUTED = cssColor("--muted", "#5d6378");
  var BAD = cssColor("--bad", "#b42318");

  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.color = MUTED;
  Chart.defaults.borderColor = "#eef0f5";
  Chart.defaults.font.family = style.fontFamily || "system-ui, sans-serif";
  Chart.defaults.font.size = 11;
  Chart.defaults.plugins.legend.labels.boxWidth = 10;
  Chart.defaults.plugins.legend.labels.boxHeight = 10;

  function fmt(value) {
    if (typeof value !== "number") { return String(value); }
    if (Math.abs(value) >= 1000) { return value.toLocaleString(); }
    return String(+value.toFixed(3));
  }

  function axisTitle(axis) {
    return { display: !!(axis && axis.label), text: axis && axis.label ? axis.label : "" };
  }

  // Screen readers get the numbers as a table (a caption, a header row, then the rows), visually hidden by a
  // wrapper: a table itself ignores the 1px box of .sr-only and would lengthen the page.
  function dataTable(caption, head, rows) {
    var box = document.createElement("div");
    box.className = "sr-only chart-data-box";
    var table = document.createElement("table");
    table.className = "chart-data";
    box.appendChild(table);
    table.createCaption().textContent = caption;
    var tr = table.createTHead().insertRow();
    head.forEach(function (h) { var th = document.createElement("th"); th.scope = "col"; th.textContent = h; tr.appendChild(th); });
    var body = table.createTBody();
    rows.forEach(function (row) {
      var r = body.insertRow();
      row.forEach(function (cell) { r.insertCell().textContent = typeof cell === "number" ? fmt(cell) : cell; });
    });
    return box;
  }

  function empty(container, message) {
    if (container._chart) { container._chart.destroy(); container._chart = null; }
    container.innerHTML = "";
    var box = document.createElement("div");
    box.className = "empty-chart";
    box.textContent = message || "No data yet.";
    container.appendChild(box);
  }

  /* Creates the chart, or updates the one already in the container; `label` is the canvas's accessible name and
     `table` the numbers behind it. */
  function mount(container, kind, config, height, label, table) {
    var chart = container._chart;
    if (chart && container._chartKind === kind) {
      chart.data = config.data;
      chart.options = config.options;
      chart.update();
      chart.canvas.setAttribute("aria-label", label);
      container.replaceChild(table, container.querySelector(".chart-data-box"));
      return chart;
    }
    if (chart) { chart.destroy(); }
    container.innerHTML = "";
    var box = document.createElement("div");
    box.className = "chart-canvas";
    box.style.height = height + "px";
    var canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", label);
    box.appendChild(canvas);
    container.appendChild(box);
    container.appendChild(table);
    container._chartKind = kind;
    container._chart = new Chart(canvas, config);
    return container._chart;
  }

  function defaultHeight(container) {
    return Math.round(Math.min(300, Math.max(200, (container.clientWidth || 260) * 0.5)));
  }

  // A long series (a PR curve has a point per threshold) is listed at about 20 evenly spaced points.
  function sample(points, most) {
    if (points.length <= most) { return points; }
    var step = (points.length - 1) / (most - 1);
    var out = [];
    for (var i = 0; i < most; i++) { out.push(points[Math.round(i * step)]); }
    return out;
  }

  // Line legends show each series as its line, dashed or not (a wide line unless a round marker is shown).
  function lineLegend(chart) {
    return Chart.defaults.plugins.legend.labels.generateLabels(chart).map(function (item) {
      var dataset = chart.data.datasets[item.datasetIndex];
      item.pointStyle = dataset.showLine === false ? "circle" : "line";
      item.lineDash = dataset.borderDash;
      return item;
    });
  }

  /* series: [{name, points: [[x, y], ...], color?, dashed?}]; x/y: {min, max, label, integer};
     marker: {x, y, label} highlights one point (the chosen threshold on a PR curve) with a guide line. */
  function line(container, options) {
    var series = (options.series || []).filter(function (s) { return s.points && s.points.length; });
    if (!series.length) { empty(container, options.empty); return null; }
    var xo = options.x || {}, yo = options.y || {};
    var datasets = series.map(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      return {
        label: s.name, borderColor: color, backgroundColor: color, borderWidth: 2.2, borderDash: s.dashed ? [5, 4] : [],
        pointRadius: s.points.length <= 40 ? 3 : 0, pointHoverRadius: 5,
        data: s.points.map(function (p) { return { x: p[0], y: p[1] }; })
      };
    });
    var mk = options.marker;
    if (mk) {
      datasets.unshift({
        label: mk.label, data: [{ x: mk.x, y: mk.y }], showLine: false, clip: false, pointStyle: "circle", pointRadius: 6,
        pointHoverRadius: 7, pointBorderWidth: 3, borderColor: BAD, backgroundColor: "#fff"
      });
      datasets.push({
        label: "", guide: true, borderColor: "#98a2b3", borderWidth: 1, borderDash: [3, 3], pointRadius: 0,
        pointHitRadius: 0, data: [{ x: mk.x, y: yo.min !== undefined ? yo.min : 0 }, { x: mk.x, y: yo.max !== undefined ? yo.max : mk.y }]
      });
    }
    var notGuide = function (item) { return !datasets[item.datasetIndex].guide; };
    var config = {
      type: "line",
      data: { datasets: datasets },
      options: {
        parsing: false,
        interaction: { mode: "nearest", intersect: false },
        scales: {
          x: { type: "linear", min: xo.min, max: xo.max, title: axisTitle(xo), grid: { display: false },
            ticks: { precision: xo.integer ? 0 : undefined } },
          y: { min: yo.min, max: yo.max, beginAtZero: true, title: axisTitle(yo), ticks: { precision: yo.integer ? 0 : undefined } }
        },
        plugins: {
          legend: { display: datasets.filter(function (d) { return !d.guide; }).length > 1, position: "bottom",
            labels: { filter: notGuide, usePointStyle: true, pointStyleWidth: mk ? undefined : 26, generateLabels: lineLegend } },
          tooltip: {
            filter: notGuide,
            callbacks: {
              title: function () { return ""; },
              label: function (ctx) {
                return ctx.dataset.label + ": " + (yo.label || "y") + " " + fmt(ctx.parsed.y) + " at " + (xo.label || "x") + " " + fmt(ctx.parsed.x);
              }
            }
          }
        }
      }
    };
    var rows = [];
    series.forEach(function (s) {
      sample(s.points, 21).forEach(function (p) { rows.push([s.name, p[0], p[1]]); });
    });
    if (mk) { rows.unshift([mk.label, mk.x, mk.y]); }
    var title = options.title || "Chart";
    var label = title + ": " + series.map(function (s) { return s.name; }).join(", ") + (mk ? "; " + mk.label : "");
    return mount(container, "line", config, options.height || defaultHeight(container), label,
      dataTable(title, ["series", xo.label || "x", yo.label || "y"], rows));
  }

  /* Stacked columns per category: categories ["2024-05-01", ...], series [{name, values: [...]}];
     x.format shortens the category under each column (tooltips show it whole). */
  function columns(container, options) {
    var cats = options.categories || [];
    var series = options.series || [];
    if (!cats.length || !series.length) { empty(container, options.empty); return null; }
    var xo = options.x || {}, yo = options.y || {};
    var short = xo.format || String;
    var config = {
      type: "bar",
      data: {
        labels: cats,
        datasets: series.map(function (s, k) {
          var color = s.color || PALETTE[k % PALETTE.length];
          return { label: s.name, data: s.values, backgroundColor: color, borderRadius: 2, maxBarThickness: 36 };
        })
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true, grid: { display: false }, title: axisTitle(xo),
            ticks: { maxRotation: 0, autoSkipPadding: 12, callback: function (value) { return short(this.getLabelForValue(value)); } } },
          y: { stacked: true, beginAtZero: true, title: axisTitle(yo), ticks: { precision: 0 } }
        },
        plugins: { legend: { display: series.length > 1, position: "bottom" } }
      }
    };
    var total = 0;
    var rows = [];
    cats.forEach(function (cat, i) {
      var values = series.map(function (s) { return s.values[i] || 0; });
      var sum = values.reduce(function (a, b) { return a + b; }, 0);
      total += sum;
      if (sum) { rows.push([cat].concat(values)); }
    });
    var title = options.title || "Chart";
    var label = title + ", " + cats[0] + " to " + cats[cats.length - 1] + ": " + total.toLocaleString() + " in all";
    return mount(container, "columns", config, options.height || defaultHeight(container), label,
      dataTable(title + " (only days with requests)", [xo.label || "day"].concat(series.map(function (s) { return s.name; })), rows));
  }

  /* Horizontal bars with their counts: items [{label, value, color?}]; colorBy "index" colours each bar. */
  function bars(container, options) {
    var items = options.items || [];
    if (!items.length) { empty(container, options.empty); return null; }
    var config = {
      type: "bar",
      data: {
        labels: items.map(function (item) { return item.label + " (" + item.value.toLocaleString() + ")"; }),
        datasets: [{
          label: options.valueLabel || "rows",
          data: items.map(function (item) { return item.value; }),
          backgroundColor: items.map(function (item, i) {
            return item.color || PALETTE[(options.colorBy === "index" ? i : 0) % PALETTE.length];
          }),
          borderRadius: 4, maxBarThickness: 18, minBarLength: 2
        }]
      },
      options: {
        indexAxis: "y",
        scales: { x: { beginAtZero: true, ticks: { precision: 0 } }, y: { grid: { display: false }, ticks: { color: "#1b1e2b", font: { size: 12 } } } },
        plugins: { legend: { display: false } }
      }
    };
    var title = options.title || "Counts";
    var label = title + ": " + items.map(function (item) { return item.label + " " + item.value.toLocaleString(); }).join(", ");
    return mount(container, "bars", config, options.height || items.length * 28 + 36, label,
      dataTable(title, ["label", options.valueLabel || "rows"], items.map(function (item) { return [item.label, item.value]; })));
  }

  window.ArbiterCharts = { line: line, columns: columns, bars: bars, palette: PALETTE };
})();
