/* workbench widgets: small, dependency-free, offline. Inlined once per page (or per notebook
 * cell by the standalone snippet); guarded so a second copy is a no-op.
 *
 * wbAttention.headView(id): bertviz-style head view. Reads the JSON in <script id="{id}-data">:
 *   {tokens: [str], types: [0|1], layers: L, heads: H, pattern: base64 float32 [L, H, P, P]}
 * Left column = queries, right column = keys; a line per selected head from a query to each key,
 * its opacity the attention weight. Hover a query to see where it attends, hover a key to see
 * who attends to it, click a query to pin it. Sets data-wb-rendered="1" on the root when drawn.
 */
(function () {
  if (window.wbAttention) return;
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd"];

  function decodeF32(b64) {
    var bin = atob(b64), u8 = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    return new Float32Array(u8.buffer);
  }

  function el(tag, attrs, parent, ns) {
    var e = ns ? document.createElementNS(SVG, tag) : document.createElement(tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function headView(id) {
    var root = document.getElementById(id);
    var d = JSON.parse(document.getElementById(id + "-data").textContent);
    var P = d.tokens.length, L = d.layers, H = d.heads, pat = decodeF32(d.pattern);
    if (pat.length !== L * H * P * P) throw new Error("wbAttention: pattern has the wrong size");
    var at = function (l, h, q, k) { return pat[((l * H + h) * P + q) * P + k]; };
    var state = { layer: d.layer || 0, heads: [], pinned: P - 1, hover: null };
    for (var h = 0; h < H; h++) state.heads.push(true);

    var bar = el("div", { "class": "wb-controls" }, root);
    bar.style.cssText = "font-size:13px;margin:4px 0 8px 0";
    bar.appendChild(document.createTextNode("Layer "));
    var sel = el("select", {}, bar);
    for (var l = 0; l < L; l++) { var o = el("option", { value: l }, sel); o.textContent = l; }
    sel.value = state.layer;
    sel.onchange = function () { state.layer = +sel.value; draw(); };
    bar.appendChild(document.createTextNode("  Heads "));
    for (var hh = 0; hh < H; hh++) (function (h) {
      var lab = el("label", {}, bar);
      lab.style.cssText = "margin-right:6px;padding:1px 4px;border-radius:3px;color:#fff;background:" + COLORS[h % COLORS.length];
      var cb = el("input", { type: "checkbox" }, lab);
      cb.checked = true;
      cb.onchange = function () { state.heads[h] = cb.checked; draw(); };
      lab.appendChild(document.createTextNode(h));
    })(hh);
    var info = el("span", {}, bar);
    info.style.cssText = "margin-left:10px;color:#555";

    var rowH = 18, colW = 150, gap = 160, width = 2 * colW + gap, height = P * rowH + 8;
    var box = el("div", {}, root);
    box.style.cssText = "max-height:620px;overflow:auto;border:1px solid #eee";
    var svg = el("svg", { width: width, height: height, "class": "wb-svg" }, box, true);
    var lines = el("g", {}, svg, true);
    var left = [], right = [];
    for (var i = 0; i < P; i++) {
      var y = 4 + i * rowH + rowH * 0.7, fill = d.types && d.types[i] ? "#8a1c7c" : "#1b1f24";
      var a = el("text", { x: colW - 6, y: y, "text-anchor": "end", fill: fill, "font-size": 13, "font-family": "monospace" }, svg, true);
      var b = el("text", { x: colW + gap + 6, y: y, fill: fill, "font-size": 13, "font-family": "monospace" }, svg, true);
      a.textContent = b.textContent = d.labels ? d.labels[i] : JSON.stringify(d.tokens[i]).slice(1, -1);
      a.style.cursor = "pointer";
      (function (i) {
        a.onmouseenter = function () { state.hover = { side: "q", i: i }; draw(); };
        b.onmouseenter = function () { state.hover = { side: "k", i: i }; draw(); };
        a.onmouseleave = b.onmouseleave = function () { state.hover = null; draw(); };
        a.onclick = function () { state.pinned = i; draw(); };
      })(i);
      left.push(a); right.push(b);
    }

    function draw() {
      while (lines.firstChild) lines.removeChild(lines.firstChild);
      var mode = state.hover || { side: "q", i: state.pinned }, n = 0, l = state.layer;
      for (var i = 0; i < P; i++) {
        left[i].setAttribute("font-weight", mode.side === "q" && mode.i === i ? "bold" : "normal");
        right[i].setAttribute("font-weight", mode.side === "k" && mode.i === i ? "bold" : "normal");
      }
      for (var h = 0; h < H; h++) {
        if (!state.heads[h]) continue;
        for (var j = 0; j < P; j++) {
          var q = mode.side === "q" ? mode.i : j, k = mode.side === "q" ? j : mode.i;
          var w = at(l, h, q, k);
          if (!(w > 0.005)) continue;  // invisible anyway; keeps the SVG small
          el("line", { x1: colW, y1: 4 + q * rowH + rowH / 2, x2: colW + gap, y2: 4 + k * rowH + rowH / 2,
            stroke: COLORS[h % COLORS.length], "stroke-width": 2, "stroke-opacity": w.toFixed(3) }, lines, true);
          n++;
        }
      }
      var who = d.labels ? d.labels[mode.i] : JSON.stringify(d.tokens[mode.i]);
      info.textContent = (mode.side === "q" ? "attention from " : "attention to ") + who +
        " (position " + mode.i + ")" + (state.hover ? "" : " - hover a token, click a query to pin it");
      root.setAttribute("data-wb-lines", n);
    }

    draw();
    root.setAttribute("data-wb-rendered", "1");
  }

  window.wbAttention = { headView: headView, decodeF32: decodeF32 };
})();
