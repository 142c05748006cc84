// stem2eds report explorer: a navigator (maps) and a signal panel (diffraction
// pattern) per scan, as in HyperSpy's plot(). Hand-written, no dependencies;
// its data is the JSON in <script id="s2e-data"> (see report/interactive.py).
(function () {
  "use strict";
  var MISSING = 65535;
  var data = JSON.parse(document.getElementById("s2e-data").textContent);
  var lut = bytes(data.colormap);

  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function decode(entry) {  // uint16 little-endian -> Float64Array, NaN where missing
    var b = bytes(entry.b64), n = b.length / 2, out = new Float64Array(n);
    for (var i = 0; i < n; i++) {
      var q = b[2 * i] | (b[2 * i + 1] << 8);
      out[i] = q === MISSING ? NaN : entry.lo + q * entry.scale;
    }
    return out;
  }
  function decodeAll(group) {
    if (!group) return null;
    var out = {};
    for (var k in group) out[k] = group[k] === null ? null : decode(group[k]);
    return out;
  }
  function range(arrays) {
    var lo = Infinity, hi = -Infinity;
    arrays.forEach(function (a) {
      for (var i = 0; i < a.length; i++) {
        if (a[i] < lo) lo = a[i];
        if (a[i] > hi) hi = a[i];
      }
    });
    if (!(hi > lo)) { hi = lo + 1; }
    return [lo, hi];
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function pct(v) { return isFinite(v) ? (100 * v).toFixed(2) : "n/a"; }

  function Scan(spec, root) {
    var self = this;
    this.spec = spec;
    this.rows = spec.shape[0];
    this.cols = spec.shape[1];
    this.pred = decodeAll(spec.predicted);
    this.meas = decodeAll(spec.measured);
    this.std = decodeAll(spec.std);
    this.scores = decodeAll(spec.scores);
    this.layers = decodeAll(spec.layers);
    this.zoom = Math.max(1, Math.floor(256 / Math.max(this.rows, this.cols)));
    this.cache = {};
    this.r = Math.floor(this.rows / 2);
    this.c = Math.floor(this.cols / 2);

    var box = el("div", {"class": "s2e-scan", "tabindex": "0", "data-scan": spec.name});
    box.appendChild(el("h3", {}, "Scan " + spec.name));
    var controls = el("div", {"class": "s2e-controls"});
    controls.appendChild(document.createTextNode("element"));
    this.elSelect = el("select", {"class": "s2e-element"});
    spec.elements.forEach(function (e) { self.elSelect.appendChild(el("option", {value: e}, e)); });
    controls.appendChild(this.elSelect);
    controls.appendChild(document.createTextNode("second map"));
    this.layerSelect = el("select", {"class": "s2e-layer"});
    this.layerNames().forEach(function (n) { self.layerSelect.appendChild(el("option", {value: n}, n)); });
    controls.appendChild(this.layerSelect);
    box.appendChild(controls);

    var row = el("div", {"class": "s2e-row"});
    this.predCanvas = this.figure(row, "s2e-map s2e-predicted", "predicted");
    this.navCanvas = this.figure(row, "s2e-map s2e-navigator", "second");
    if (!this.layerSelect.options.length) {  // nothing to show beside the prediction
      this.navCanvas.parentNode.style.display = "none";
      this.layerSelect.style.display = "none";
    }
    this.patCanvas = this.figure(row, "s2e-pattern", "pattern");
    this.readout = el("table", {"class": "s2e-readout"});
    var side = el("div");
    side.appendChild(this.readout);
    this.pos = el("p", {"class": "s2e-pos"});
    side.appendChild(this.pos);
    row.appendChild(side);
    box.appendChild(row);
    root.appendChild(box);
    this.box = box;

    [this.predCanvas, this.navCanvas].forEach(function (cv) {
      cv.addEventListener("click", function (ev) {
        var rect = cv.getBoundingClientRect();
        var c = Math.floor((ev.clientX - rect.left) / rect.width * self.cols);
        var r = Math.floor((ev.clientY - rect.top) / rect.height * self.rows);
        self.select(r, c);
        box.focus();
      });
    });
    box.addEventListener("keydown", function (ev) {
      var d = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]}[ev.key];
      if (!d) return;
      ev.preventDefault();
      self.select(self.r + d[0], self.c + d[1]);
    });
    this.elSelect.addEventListener("change", function () { self.draw(); });
    this.layerSelect.addEventListener("change", function () { self.draw(); });

    this.sprite = null;
    if (spec.sprite) {
      var img = new Image();
      img.onload = function () { self.sprite = img; self.drawPattern(); };
      // a Blob of the decoded bytes: the sprite is data, not one of the page's figures
      img.src = URL.createObjectURL(new Blob([bytes(spec.sprite.png)], {type: "image/png"}));
    }
    this.select(this.r, this.c);
  }

  Scan.prototype.figure = function (row, cls, what) {
    var fig = el("figure");
    var cv = el("canvas", {"class": cls});
    fig.appendChild(cv);
    var cap = el("figcaption", {"class": "s2e-caption-" + what});
    fig.appendChild(cap);
    row.appendChild(fig);
    return cv;
  };

  Scan.prototype.layerNames = function () {
    var names = [];
    if (this.meas) names.push("measured", "|predicted - measured|");
    if (this.std) names.push("uncertainty (std)");
    for (var k in this.scores) if (this.scores[k]) names.push(k);
    for (var l in this.layers) names.push(l);
    return names;
  };

  Scan.prototype.layer = function (name, element) {
    // (values, [lo, hi], caption) of one navigator image
    var p = this.pred[element];
    if (name === "predicted") {
      var both = this.meas ? [p, this.meas[element]] : [p];
      return [p, range(both), "predicted " + element + " (at. fraction)"];
    }
    if (name === "measured") {
      return [this.meas[element], range([p, this.meas[element]]), "measured " + element + " (at. fraction)"];
    }
    if (name === "|predicted - measured|") {
      var m = this.meas[element], e = new Float64Array(p.length);
      for (var i = 0; i < p.length; i++) e[i] = Math.abs(p[i] - m[i]);
      return [e, range([e]), "|predicted - measured| " + element];
    }
    if (name === "uncertainty (std)") {
      return [this.std[element], range([this.std[element]]), "uncertainty (std) of " + element];
    }
    var v = (name in this.scores) ? this.scores[name] : this.layers[name];
    return [v, range([v]), name];
  };

  Scan.prototype.image = function (name, element) {
    var key = name + "/" + element;
    if (this.cache[key]) return this.cache[key];
    var spec = this.layer(name, element), v = spec[0], lo = spec[1][0], hi = spec[1][1];
    var off = document.createElement("canvas");
    off.width = this.cols;
    off.height = this.rows;
    var ctx = off.getContext("2d"), im = ctx.createImageData(this.cols, this.rows);
    for (var i = 0; i < v.length; i++) {
      var t = isFinite(v[i]) ? Math.round(255 * (v[i] - lo) / (hi - lo)) : -1;
      t = Math.max(-1, Math.min(255, t));
      im.data[4 * i] = t < 0 ? 255 : lut[3 * t];
      im.data[4 * i + 1] = t < 0 ? 255 : lut[3 * t + 1];
      im.data[4 * i + 2] = t < 0 ? 255 : lut[3 * t + 2];
      im.data[4 * i + 3] = 255;
    }
    ctx.putImageData(im, 0, 0);
    this.cache[key] = [off, spec[2] + ", colour range " + lo.toPrecision(3) + " .. " + hi.toPrecision(3)];
    return this.cache[key];
  };

  Scan.prototype.drawMap = function (cv, name) {
    var img = this.image(name, this.elSelect.value), z = this.zoom;
    cv.width = this.cols * z;
    cv.height = this.rows * z;
    var ctx = cv.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img[0], 0, 0, cv.width, cv.height);
    ctx.strokeStyle = "#ff2a2a";
    ctx.lineWidth = Math.max(1, z / 4);
    ctx.strokeRect(this.c * z, this.r * z, z, z);
    ctx.globalAlpha = 0.5;
    ctx.beginPath();
    ctx.moveTo(0, (this.r + 0.5) * z); ctx.lineTo(cv.width, (this.r + 0.5) * z);
    ctx.moveTo((this.c + 0.5) * z, 0); ctx.lineTo((this.c + 0.5) * z, cv.height);
    ctx.stroke();
    ctx.globalAlpha = 1;
    cv.parentNode.querySelector("figcaption").textContent = img[1];
  };

  Scan.prototype.nearest = function (list, v) {
    var best = 0;
    for (var i = 1; i < list.length; i++) if (Math.abs(list[i] - v) < Math.abs(list[best] - v)) best = i;
    return best;
  };

  Scan.prototype.drawPattern = function () {
    var cv = this.patCanvas, cap = cv.parentNode.querySelector("figcaption"), sp = this.spec.sprite;
    if (!sp) {
      cv.width = 1; cv.height = 1;
      cap.textContent = "diffraction patterns not available (see the note above)";
      return;
    }
    var a = this.nearest(sp.rows, this.r), b = this.nearest(sp.cols, this.c);
    cv.dataset.gridRow = a;
    cv.dataset.gridCol = b;
    cv.dataset.scanRow = sp.rows[a];
    cv.dataset.scanCol = sp.cols[b];
    cap.textContent = "diffraction pattern at (" + sp.rows[a] + ", " + sp.cols[b] + ")" +
      (sp.rows[a] === this.r && sp.cols[b] === this.c ? "" : ", the nearest sampled position") +
      "; " + sp.scaling;
    if (!this.sprite) return;
    var z = Math.max(1, Math.floor(192 / sp.cell));
    cv.width = sp.cell * z;
    cv.height = sp.cell * z;
    var ctx = cv.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.sprite, b * sp.cell, a * sp.cell, sp.cell, sp.cell, 0, 0, cv.width, cv.height);
    cv.dataset.zoom = z;
    cv.dataset.drawn = "1";
  };

  Scan.prototype.cell = function (tr, text, value, cls) {
    var td = el("td", cls ? {"class": cls} : {}, text);
    if (value !== undefined && isFinite(value)) td.dataset.value = value;
    tr.appendChild(td);
  };

  Scan.prototype.drawReadout = function () {
    var t = this.readout, i = this.r * this.cols + this.c, self = this;
    t.textContent = "";
    var head = el("tr");
    ["element", "predicted (at.%)", "measured (at.%)", "\u00b1 std (at.%)"].forEach(function (h) {
      head.appendChild(el("th", {}, h));
    });
    t.appendChild(head);
    this.spec.elements.forEach(function (e) {
      var tr = el("tr", {"data-element": e});
      self.cell(tr, e);
      var p = self.pred[e][i];
      self.cell(tr, pct(p), p, "s2e-predicted");
      if (self.meas) { var m = self.meas[e][i]; self.cell(tr, pct(m), m, "s2e-measured"); }
      else self.cell(tr, "not measured", undefined, "na s2e-measured");
      if (self.std) { var s = self.std[e][i]; self.cell(tr, pct(s), s, "s2e-std"); }
      else self.cell(tr, "not computed", undefined, "na s2e-std");
      t.appendChild(tr);
    });
    for (var k in this.scores) {
      var tr = el("tr", {"data-score": k});
      this.cell(tr, k);
      var v = this.scores[k] ? this.scores[k][i] : NaN;
      var text = !this.scores[k] ? "not computed" :
        (k === "crystalline" ? (v > 0.5 ? "yes" : "no") : (isFinite(v) ? v.toPrecision(3) : "n/a"));
      var td = el("td", {"colspan": "3", "class": this.scores[k] ? "s2e-score" : "na s2e-score"}, text);
      if (this.scores[k] && isFinite(v)) td.dataset.value = v;
      tr.appendChild(td);
      t.appendChild(tr);
    }
    var px = this.spec.pixel;
    this.pos.textContent = "position row " + this.r + ", column " + this.c + " (" +
      (this.r * px[0]).toPrecision(4) + ", " + (this.c * px[0]).toPrecision(4) + " " + px[1] + ")";
  };

  Scan.prototype.draw = function () {
    this.drawMap(this.predCanvas, "predicted");
    if (this.layerSelect.value) this.drawMap(this.navCanvas, this.layerSelect.value);
    this.drawPattern();
    this.drawReadout();
  };

  Scan.prototype.select = function (r, c) {
    this.r = Math.max(0, Math.min(this.rows - 1, r));
    this.c = Math.max(0, Math.min(this.cols - 1, c));
    this.box.dataset.row = this.r;
    this.box.dataset.col = this.c;
    this.draw();
  };

  var root = document.getElementById("s2e-scans");
  window.stem2edsExplorer = data.scans.map(function (spec) { return new Scan(spec, root); });
})();
