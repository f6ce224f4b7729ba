/* Small SVG charts drawn from API data: lines (loss curves, PR curves), columns (usage) and bars (counts).
   No dependencies, so the console works air-gapped. Each function redraws its container from scratch and
   again when the container is resized. */
(function () {
  "use strict";

  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["var(--c1)", "var(--c2)", "var(--c3)", "var(--c4)", "var(--c5)", "var(--c6)"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function text(parent, x, y, value, attrs) {
    var node = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    node.textContent = value;
    return node;
  }

  // Round tick values: 1, 2 or 5 times a power of ten.
  function ticks(min, max, count) {
    if (!(max > min)) { return [min]; }
    var raw = (max - min) / Math.max(count, 1);
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * power; }).find(function (s) { return s >= raw; });
    var out = [];
    for (var v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) { out.push(+v.toFixed(10)); }
    return out;
  }

  function fmt(value) {
    if (Math.abs(value) >= 1000) { return value.toLocaleString(); }
    return String(+value.toFixed(3));
  }

  function legend(container, series) {
    if (series.length < 2) { return; }
    var box = document.createElement("div");
    box.className = "legend";
    series.forEach(function (s, i) {
      var item = document.createElement("span");
      var swatch = document.createElement("i");
      swatch.style.background = s.color || PALETTE[i % PALETTE.length];
      if (s.dashed) { swatch.style.opacity = ".55"; }
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.name));
      box.appendChild(item);
    });
    container.appendChild(box);
  }

  function empty(container, message) {
    var box = document.createElement("div");
    box.className = "empty-chart";
    box.textContent = message || "No data yet.";
    container.appendChild(box);
  }

  function frame(container, options) {
    var width = Math.max(container.clientWidth || 0, 260);
    var height = options.height || Math.round(Math.min(300, Math.max(200, width * 0.5)));
    var m = { top: 12, right: 16, bottom: options.x && options.x.label ? 40 : 26, left: 52 };
    var svg = el("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": options.title || "chart" });
    return { svg: svg, width: width, height: height, m: m, w: width - m.left - m.right, h: height - m.top - m.bottom };
  }

  function axes(f, xs, ys, sx, sy, options) {
    var grid = el("g", { "class": "grid" }, f.svg);
    var axis = el("g", { "class": "axis" }, f.svg);
    ys.forEach(function (v) {
      el("line", { x1: f.m.left, x2: f.m.left + f.w, y1: sy(v), y2: sy(v) }, grid);
      text(axis, f.m.left - 6, sy(v) + 4, (options.y && options.y.format || fmt)(v), { "text-anchor": "end" });
    });
    xs.forEach(function (v) {
      text(axis, sx(v), f.m.top + f.h + 16, (options.x && options.x.format || fmt)(v), { "text-anchor": "middle" });
    });
    el("line", { x1: f.m.left, x2: f.m.left + f.w, y1: f.m.top + f.h, y2: f.m.top + f.h }, axis);
    if (options.x && options.x.label) {
      text(axis, f.m.left + f.w / 2, f.height - 4, options.x.label, { "text-anchor": "middle" });
    }
    if (options.y && options.y.label) {
      text(axis, 12, f.m.top + f.h / 2, options.y.label,
        { "text-anchor": "middle", transform: "rotate(-90 12 " + (f.m.top + f.h / 2) + ")" });
    }
  }

  function draw(container, options, painter) {
    function render() {
      container.innerHTML = "";
      painter();
    }
    render();
    if (window.ResizeObserver && !container._chartObserved) {
      container._chartObserved = true;
      var width = container.clientWidth;
      new ResizeObserver(function () {
        if (Math.abs(container.clientWidth - width) > 8) { width = container.clientWidth; container._redraw(); }
      }).observe(container);
    }
    container._redraw = render;
  }

  /* series: [{name, points: [[x, y], ...], color?, dashed?, step?}]; x/y: {min, max, label, format, integer};
     marker: {x, y, label} draws a highlighted point (e.g. the chosen threshold on a PR curve). */
  function line(container, options) {
    draw(container, options, function () {
      var series = (options.series || []).filter(function (s) { return s.points && s.points.length; });
      if (!series.length) { empty(container, options.empty); return; }
      var f = frame(container, options);
      var all = [].concat.apply([], series.map(function (s) { return s.points; }));
      var xo = options.x || {}, yo = options.y || {};
      var xmin = xo.min !== undefined ? xo.min : Math.min.apply(null, all.map(function (p) { return p[0]; }));
      var xmax = xo.max !== undefined ? xo.max : Math.max.apply(null, all.map(function (p) { return p[0]; }));
      var ymin = yo.min !== undefined ? yo.min : Math.min(0, Math.min.apply(null, all.map(function (p) { return p[1]; })));
      var ymax = yo.max !== undefined ? yo.max : Math.max.apply(null, all.map(function (p) { return p[1]; })) * 1.08;
      if (xmax === xmin) { xmax = xmin + 1; }
      if (!(ymax > ymin)) { ymax = ymin + 1; }
      var sx = function (v) { return f.m.left + (v - xmin) / (xmax - xmin) * f.w; };
      var sy = function (v) { return f.m.top + f.h - (v - ymin) / (ymax - ymin) * f.h; };
      var whole = function (v) { return v === Math.round(v); };
      var xt = xo.ticks || ticks(xmin, xmax, Math.max(2, Math.floor(f.w / 70)));
      if (xo.integer) { xt = xt.filter(whole); }
      var yt = ticks(ymin, ymax, 4);
      if (yo.integer) { yt = yt.filter(whole); }
      axes(f, xt, yt, sx, sy, options);
      var group = el("g", { "class": "series" }, f.svg);
      series.forEach(function (s, i) {
        var color = s.color || PALETTE[i % PALETTE.length];
        var d = s.points.map(function (p, j) {
          var cmd = j === 0 ? "M" : "L";
          if (s.step && j > 0) { return "H" + sx(p[0]).toFixed(1) + "V" + sy(p[1]).toFixed(1); }
          return cmd + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1);
        }).join("");
        el("path", { d: d, stroke: color, "stroke-dasharray": s.dashed ? "5 4" : "none" }, group);
        if (s.points.length <= 40) {
          s.points.forEach(function (p) {
            var dot = el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color }, group);
            el("title", {}, dot).textContent = s.name + ": " + fmt(p[1]) + " at " + fmt(p[0]);
          });
        }
      });
      if (options.marker) {
        var mk = options.marker;
        el("line", { x1: sx(mk.x), x2: sx(mk.x), y1: f.m.top, y2: f.m.top + f.h, stroke: "#98a2b3", "stroke-dasharray": "3 3" }, f.svg);
        el("circle", { cx: sx(mk.x), cy: sy(mk.y), r: 6, fill: "#fff", stroke: "var(--bad)", "stroke-width": 3, "class": "marker" }, f.svg);
        if (mk.label) {
          var left = sx(mk.x) > f.m.left + f.w * 0.7;
          text(f.svg, sx(mk.x) + (left ? -10 : 10), Math.max(sy(mk.y) - 10, f.m.top + 10), mk.label,
            { "text-anchor": left ? "end" : "start", style: "fill: var(--ink); font-weight: 600" });
        }
      }
      container.appendChild(f.svg);
      legend(container, series);
    });
  }

  /* Stacked columns per category: categories ["2024-05-01", ...], series [{name, values: [...]}]. */
  function columns(container, options) {
    draw(container, options, function () {
      var cats = options.categories || [];
      var series = options.series || [];
      if (!cats.length || !series.length) { empty(container, options.empty); return; }
      var f = frame(container, options);
      var totals = cats.map(function (_, i) { return series.reduce(function (sum, s) { return sum + (s.values[i] || 0); }, 0); });
      var ymax = Math.max.apply(null, totals.concat([1])) * 1.1;
      var sy = function (v) { return f.m.top + f.h - v / ymax * f.h; };
      var band = f.w / cats.length;
      var sx = function (i) { return f.m.left + band * i + band / 2; };
      var every = Math.ceil(cats.length / Math.max(1, Math.floor(f.w / 70)));
      var shown = cats.map(function (_, i) { return i; }).filter(function (i) { return i % every === 0; });
      var yticks = ticks(0, ymax, 4).filter(function (v) { return v === Math.round(v); });
      axes(f, shown, yticks, sx, sy, Object.assign({}, options, {
        x: Object.assign({}, options.x, { format: function (i) { return (options.x && options.x.format || String)(cats[i]); } })
      }));
      var bar = Math.max(2, Math.min(36, band * 0.7));
      cats.forEach(function (cat, i) {
        var base = 0;
        series.forEach(function (s, k) {
          var v = s.values[i] || 0;
          if (!v) { return; }
          var rect = el("rect", { x: sx(i) - bar / 2, y: sy(base + v), width: bar, height: Math.max(1, sy(base) - sy(base + v)),
            rx: 2, fill: s.color || PALETTE[k % PALETTE.length] }, f.svg);
          el("title", {}, rect).textContent = s.name + ", " + cat + ": " + v.toLocaleString();
          base += v;
        });
      });
      container.appendChild(f.svg);
      legend(container, series);
    });
  }

  /* Horizontal bars: items [{label, value, note?}]. */
  function bars(container, options) {
    draw(container, options, function () {
      var items = options.items || [];
      if (!items.length) { empty(container, options.empty); return; }
      var max = Math.max.apply(null, items.map(function (i) { return i.value; }).concat([1]));
      var box = document.createElement("div");
      box.className = "bars";
      items.forEach(function (item, i) {
        var label = document.createElement("span");
        label.textContent = item.label;
        var track = document.createElement("span");
        track.className = "track";
        var fill = document.createElement("span");
        fill.className = "bar";
        fill.style.width = (item.value / max * 100).toFixed(1) + "%";
        fill.style.background = item.color || PALETTE[(options.colorBy === "index" ? i : 0) % PALETTE.length];
        fill.title = item.label + ": " + item.value.toLocaleString();
        track.appendChild(fill);
        var count = document.createElement("span");
        count.className = "count";
        count.textContent = item.value.toLocaleString() + (item.note ? " " + item.note : "");
        box.appendChild(label); box.appendChild(track); box.appendChild(count);
      });
      container.appendChild(box);
    });
  }

  window.ArbiterCharts = { line: line, columns: columns, bars: bars, palette: PALETTE };
})();
