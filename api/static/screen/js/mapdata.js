// What the map shows, kept current: positions once (/map/positions), states as changes
// (/map/states?since=), or for a city too big to draw dot by dot, density bins (/map/density)
// until the view is small enough to fetch the positions inside it (bbox=).

import { forget, getJSON } from "./api.js";
import { COS_LAT0, DeviceStore, project } from "./devices.js";
import { STATUS_ORDER } from "./colours.js";
import { districtRegions } from "./districts.js";

// Above this many devices in view the map draws density bins instead of single devices
// (?max_drawn= lowers it, to see the density mode with a small city).
export const MAX_DRAWN = Number(new URLSearchParams(window.location.search).get("max_drawn")) || 300000;
const HULL_COLUMNS = 256;

// The outline of many points from the extremes of each of HULL_COLUMNS vertical strips: the same
// convex hull for practical purposes, at the cost of a few hundred points instead of all of them.
function outlinePoints(xs, ys, n) {
  if (!n) return [];
  let x0 = Infinity, x1 = -Infinity;
  for (let i = 0; i < n; i++) { if (xs[i] < x0) x0 = xs[i]; if (xs[i] > x1) x1 = xs[i]; }
  const lo = new Float64Array(HULL_COLUMNS).fill(Infinity);
  const hi = new Float64Array(HULL_COLUMNS).fill(-Infinity);
  const colX = new Float64Array(HULL_COLUMNS);
  const width = (x1 - x0) / HULL_COLUMNS || 1;
  for (let i = 0; i < n; i++) {
    const c = Math.min(HULL_COLUMNS - 1, Math.floor((xs[i] - x0) / width));
    if (ys[i] < lo[c]) lo[c] = ys[i];
    if (ys[i] > hi[c]) hi[c] = ys[i];
    colX[c] = xs[i];
  }
  const out = [];
  for (let c = 0; c < HULL_COLUMNS; c++) {
    if (lo[c] !== Infinity) {
      out.push([x0 + c * width, lo[c]], [x0 + (c + 1) * width, lo[c]], [x0 + c * width, hi[c]], [x0 + (c + 1) * width, hi[c]]);
    }
  }
  return out;
}

export class MapData {
  constructor(map, catalog) {
    this.map = map;
    this.catalog = catalog;
    this.store = new DeviceStore();
    this.mode = null; // "devices" | "density"
    this.total = 0;
    this.bboxKey = null;
    this.viewBox = null; // bbox= of the single devices drawn in density mode
  }

  // `positions`: an answer to /map/positions already fetched (null when it was refused as too big).
  // `states`: a first /map/states answer fetched alongside.
  async start(total, positions, states) {
    this.total = total;
    if (total <= MAX_DRAWN) {
      this.mode = "devices";
      await this.loadPositions(null, positions, states);
    } else {
      this.mode = "density";
      await this.loadDensity();
    }
  }

  async loadPositions(bbox, fetched, states) {
    const params = { max: MAX_DRAWN, ...(bbox ? { bbox: bbox.map((v) => v.toFixed(4)).join(",") } : {}) };
    const body = fetched || (await getJSON("/map/positions", params)).body;
    this.store.load(body);
    if (!this.map.regions.length || !bbox) {
      const points = outlinePoints(this.store.x, this.store.y, this.store.count);
      this.map.setRegions(districtRegions(this.catalog.districts, points));
    }
    if (this.mode === "density") {
      // A city this size: /map/states for the whole city would list millions of devices, so a
      // zoomed-in view asks for the states of its own devices (bbox=), polled like the rest.
      this.viewBox = params.bbox;
      this.store.status.fill(STATUS_ORDER.indexOf("unknown"));
    } else if (states && states.registry === this.store.registry) this.store.applyStates(states);
    else await this.pollStates();
    this.map.setDevices(this.store);
    if (this.mode === "density" && (await this.pollStates())) this.map.request();
  }

  // Cell size from the view: about 6 px per cell, between 0.002 and 0.2 degrees.
  cellDeg() {
    const scale = this.map.view ? this.map.view.scale : 1500;
    const deg = 6 / scale;
    const steps = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];
    return steps.find((s) => s >= deg) ?? 0.2;
  }

  async loadDensity() {
    const cell = this.cellDeg();
    const { body } = await getJSON("/map/density", { cell_deg: cell });
    if (!this.map.regions.length) {
      const points = body.x.map((x, k) => project((x + 0.5) * cell, (body.y[k] + 0.5) * cell));
      this.map.setRegions(districtRegions(this.catalog.districts, points));
    }
    this.map.setBins({ ...body, cos: COS_LAT0 });
  }

  // After a pan or zoom in density mode: single devices when few enough are in view.
  async viewChanged() {
    if (this.mode !== "density") return;
    const box = this.map.visibleBox(COS_LAT0);
    const bins = this.map.bins;
    let inView = 0;
    if (bins) {
      for (let k = 0; k < bins.x.length; k++) {
        const lon = (bins.x[k] + 0.5) * bins.cell_deg, lat = (bins.y[k] + 0.5) * bins.cell_deg;
        if (lon >= box[0] && lon <= box[2] && lat >= box[1] && lat <= box[3]) inView += bins.n[k];
      }
    }
    if (bins && inView <= MAX_DRAWN) {
      await this.loadPositions(box);
    } else {
      this.viewBox = null;
      await this.loadDensity();
    }
  }

  // One poll of the states; true when the map must be redrawn.
  async pollStates() {
    if (!this.store.count) return false;
    if (this.mode === "density") {
      if (!this.viewBox || this.map.bins) return false; // density bins on screen: nothing to colour
      const { body, changed } = await getJSON("/map/states", { bbox: this.viewBox });
      return changed && this.store.applyStates(body);
    }
    const since = this.store.version;
    const params = since === null ? {} : { since };
    const { body, changed } = await getJSON("/map/states", params);
    if (!changed) return false;
    if (body.registry !== this.store.registry && this.mode === "devices" && since !== null) {
      // Devices were added or re-registered: positions again (they start over with a reset).
      await this.loadPositions();
      return true;
    }
    if (since !== null && body.version !== since) forget("/map/states?since=" + since);
    return this.store.applyStates(body);
  }
}
