// One small live chart (uPlot from npm, loaded as a vendor script). Charts of error and
// loss get a "log scale" box: late progress (0.05 -> 0.03) is invisible on a linear axis.
// The width follows the chart's box (phones: the screen), at most 560 px.
import { el } from "./api.js";

export function chart(title, unit, { log = false } = {}) {
  const box = el("input", { type: "checkbox", class: "log-scale" });
  const node = el("div", { class: "chart", "data-title": title });
  const wrap = el("div", { class: "chart-wrap" }, node,
    log ? el("label", { class: "small muted" }, box, " log scale") : "");
  const xs = [], ys = [];
  let plot = null;
  const width = () => Math.max(240, Math.min(560, (wrap.clientWidth || 360) - 4));
  const opts = () => ({
    title, width: width(), height: 200,
    scales: { x: { time: false }, y: box.checked ? { distr: 3 } : {} },
    series: [{ label: "iteration" }, { label: unit, stroke: "#2459c7", width: 2, points: { show: true, size: 4 } }],
    axes: [{ label: "iteration" }, { label: unit }],
  });
  function draw() {
    if (typeof uPlot === "undefined" || !xs.length) return;
    if (plot) plot.destroy();
    node.replaceChildren();
    plot = new uPlot(opts(), [xs, ys.map((y) => (box.checked && y <= 0 ? null : y))], node);
    node.uplot = plot; // for tests and the curious: its scales say linear (1) or log (3)
  }
  box.addEventListener("change", draw);
  addEventListener("resize", () => { if (plot) plot.setSize({ width: width(), height: 200 }); });
  return {
    node: wrap,
    points: () => xs.length,
    push(x, y) {
      if (y === null || y === undefined || Number.isNaN(y)) return;
      xs.push(x); ys.push(y);
      if (!plot || box.checked) draw(); // a log axis cannot take zeros: those points are left out
      else plot.setData([xs, ys]);
    },
  };
}
