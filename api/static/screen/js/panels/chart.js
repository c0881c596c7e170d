// A metric of one device over 1 h / 24 h / 7 d / 30 d, drawn with uPlot (vendored, window.uPlot).
// The bucket is the smallest "nice" width giving at most TARGET_POINTS buckets and no finer than
// the kind's reporting interval; the API refuses more than api.max_buckets, so a 400
// too_many_buckets doubles the width and asks again.

import { getJSON } from "../api.js";
import { t } from "../i18n.js";

export const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
const TARGET_POINTS = 360;
const STEPS_S = [10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800];

export function chooseBucket(rangeS, intervalS) {
  const wanted = Math.max(rangeS / TARGET_POINTS, Math.min(intervalS, rangeS / 12));
  return STEPS_S.find((s) => s >= wanted) ?? STEPS_S[STEPS_S.length - 1];
}

export function bucketText(seconds) {
  if (seconds % 86400 === 0) return `${seconds / 86400}d`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

async function series(params, agg) {
  const { body } = await getJSON("/aggregates", { ...params, agg });
  const points = body.series.length ? body.series[0].points : [];
  return new Map(points.map((p) => [Date.parse(p.time) / 1000, p.value]));
}

export class MetricChart {
  constructor(root) {
    this.root = root;
    this.plot = null;
    this.info = null;
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }

  async show(device, kind, metric, range) {
    const rangeS = RANGES[range];
    const to = new Date();
    const from = new Date(to.getTime() - rangeS * 1000);
    let bucket = chooseBucket(rangeS, kind.interval_s);
    let data = null;
    for (let attempt = 0; attempt < 6 && !data; attempt++) {
      const params = {
        kind: kind.name, metric: metric.name, device_id: device, bucket: bucketText(bucket),
        from: from.toISOString(), to: to.toISOString(),
      };
      try {
        const [avg, min, max] = await Promise.all(["avg", "min", "max"].map((a) => series(params, a)));
        data = { avg, min, max };
      } catch (err) {
        if (err.code !== "too_many_buckets") throw err;
        bucket *= 2;
      }
    }
    const xs = [...data.avg.keys()].sort((a, b) => a - b);
    this.info = { bucket: bucketText(bucket), points: xs.length };
    this.draw(xs, data, metric);
    return this.info;
  }

  draw(xs, data, metric) {
    this.destroy();
    const width = Math.max(200, this.root.clientWidth || 400);
    const opts = {
      width,
      height: 180,
      legend: { show: true },
      scales: { x: { time: true } },
      axes: [
        { stroke: "#8193ad", grid: { stroke: "#1b2a44" }, ticks: { stroke: "#1b2a44" } },
        { stroke: "#8193ad", grid: { stroke: "#1b2a44" }, ticks: { stroke: "#1b2a44" }, size: 56 },
      ],
      series: [
        {},
        { label: "min", stroke: "rgba(76,195,255,.35)", width: 1 },
        { label: `${metric.name} (${metric.unit})`, stroke: "#4cc3ff", width: 2 },
        { label: "max", stroke: "rgba(76,195,255,.35)", width: 1 },
      ],
    };
    const pick = (m) => xs.map((x) => m.get(x) ?? null);
    this.plot = new window.uPlot(opts, [xs, pick(data.min), pick(data.avg), pick(data.max)], this.root);
    this.root.dataset.points = String(xs.length);
    if (!xs.length) this.root.insertAdjacentHTML("beforeend", `<div class="muted">${t("no_data")}</div>`);
  }
}
