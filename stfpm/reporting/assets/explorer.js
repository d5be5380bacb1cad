// The threshold explorer of test.py's report: moves the image threshold over the observed scores and shows, from the
// per-image scores embedded in the page, the share of defective images caught, of good images flagged, the counts,
// each defect type's share caught and the predict.py command for that threshold. No library, no network.
"use strict";
(function () {
  var source = document.getElementById("report-data");
  var range = document.getElementById("explorer-range");
  if (!source || !range) { return; }
  var data = JSON.parse(source.textContent);
  var scores = data.scores, labels = data.labels, types = data.types, names = data.typeNames;
  var steps = Array.from(new Set(scores));
  var start = data.start;
  if (steps.indexOf(start) < 0) { steps.push(start); }
  steps.push(data.above);  // just above the highest score: nothing is flagged
  steps.sort(function (a, b) { return a - b; });
  var box = document.getElementById("explorer-value");
  range.max = String(steps.length - 1);

  function el(id) { return document.getElementById(id); }
  function share(part, whole) { return whole ? part / whole : NaN; }
  function percent(x) { return isFinite(x) ? (100 * x).toFixed(1) + "%" : "n/a"; }
  function put(id, value, text) {
    var node = el(id);
    if (!node) { return; }
    node.setAttribute("data-value", isFinite(value) ? String(value) : "NaN");
    node.textContent = text;
  }
  function nearest(t) {
    var best = 0;
    for (var i = 0; i < steps.length; i++) { if (steps[i] <= t) { best = i; } }
    return best;
  }
  function count(t) {
    var c = { tp: 0, fn: 0, fp: 0, tn: 0, caught: new Array(names.length).fill(0), typed: new Array(names.length).fill(0) };
    for (var i = 0; i < scores.length; i++) {
      var flagged = scores[i] >= t;
      if (labels[i]) {
        if (flagged) { c.tp++; } else { c.fn++; }
        c.typed[types[i]]++;
        if (flagged) { c.caught[types[i]]++; }
      } else if (flagged) { c.fp++; } else { c.tn++; }
    }
    return c;
  }
  function moveMarks(tpr, fpr, t) {
    var line = el("hist-threshold"), point = el("roc-point");
    if (line) {
      var svg = line.ownerSVGElement, low = +svg.dataset.low, high = +svg.dataset.high;
      var x = +svg.dataset.x0 + Math.min(1, Math.max(0, (t - low) / (high - low))) * +svg.dataset.width;
      line.setAttribute("x1", x); line.setAttribute("x2", x); line.setAttribute("visibility", "visible");
    }
    if (point && isFinite(tpr) && isFinite(fpr)) {
      var roc = point.ownerSVGElement;
      point.setAttribute("cx", +roc.dataset.x0 + fpr * +roc.dataset.width);
      point.setAttribute("cy", +roc.dataset.y1 - tpr * +roc.dataset.height);
      point.setAttribute("visibility", "visible");
    }
  }
  function show(t) {
    var c = count(t), defective = c.tp + c.fn, good = c.fp + c.tn;
    var tpr = share(c.tp, defective), fpr = share(c.fp, good);
    put("explorer-threshold", t, t.toPrecision(6));
    put("explorer-caught", tpr, percent(tpr));
    put("explorer-flagged", fpr, percent(fpr));
    put("explorer-counts", c.tp + c.fp, c.tp + " of " + defective + " defective images caught, " + c.fn + " missed; " +
        c.fp + " of " + good + " good images flagged, " + c.tn + " passed");
    for (var k = 0; k < names.length; k++) {
      var rate = share(c.caught[k], c.typed[k]);
      put("explorer-type-" + k, rate, c.typed[k] ? percent(rate) + " (" + c.caught[k] + " of " + c.typed[k] + ")" : "");
    }
    el("explorer-command").textContent = data.command + String(t) + data.pixelArgument;
    moveMarks(tpr, fpr, t);
  }
  range.addEventListener("input", function () {
    var t = steps[+range.value];
    box.value = String(t);
    show(t);
  });
  box.addEventListener("change", function () {
    var t = parseFloat(box.value);
    if (!isFinite(t)) { return; }
    range.value = String(nearest(t));
    show(t);
  });
  el("explorer-reset").addEventListener("click", function () {
    range.value = String(nearest(start));
    box.value = String(start);
    show(start);
  });
  range.value = String(nearest(start));
  box.value = String(start);
  show(start);
})();
