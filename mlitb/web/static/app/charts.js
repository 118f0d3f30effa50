// One small live chart (uPlot from npm, loaded as a vendor script).
import { el } from "./api.js";

export function chart(title, unit) {
  const node = el("div", { class: "chart", "data-title": title });
  const xs = [], ys = [];
  let plot = null;
  const opts = {
    title, width: 360, height: 200,
    scales: { x: { time: false } },
    series: [{ label: "iteration" }, { label: unit, stroke: "#2459c7", width: 2, points: { show: true, size: 4 } }],
    axes: [{ label: "iteration" }, { label: unit }],
  };
  return {
    node,
    points: () => xs.length,
    push(x, y) {
      if (y === null || y === undefined || Number.isNaN(y)) return;
      xs.push(x); ys.push(y);
      if (!plot) { if (typeof uPlot === "undefined") return; plot = new uPlot(opts, [xs, ys], node); }
      else plot.setData([xs, ys]);
    },
  };
}
