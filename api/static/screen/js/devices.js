// The devices the map draws, as columns (typed arrays), kept in step with the API:
// positions from /map/positions once, states from /map/states (a reset, then changes since=).

import { STATUS_ORDER } from "./colours.js";

// Projection of the whole screen: equirectangular with x scaled by cos(latitude) at the city's
// middle, so distances are true to about 1 % across Shenzhen (22.45-22.85 N).
export const LAT0 = 22.6;
export const COS_LAT0 = Math.cos((LAT0 * Math.PI) / 180);
export const project = (lon, lat) => [lon * COS_LAT0, lat];

const ONLINE = STATUS_ORDER.indexOf("online");

export class DeviceStore {
  constructor() {
    this.count = 0;
    this.ids = [];
    this.kinds = [];
    this.districts = [];
    this.kind = new Int8Array(0);
    this.district = new Int8Array(0);
    this.x = new Float32Array(0);
    this.y = new Float32Array(0);
    this.status = new Uint8Array(0);
    this.index = new Map();
    this.registry = null;
    this.version = null;
  }

  load(positions) {
    const n = positions.count;
    const scale = positions.scale;
    this.count = n;
    this.ids = positions.id;
    this.kinds = positions.kinds;
    this.districts = positions.districts;
    this.kind = Int8Array.from(positions.kind);
    this.district = Int8Array.from(positions.district);
    this.x = new Float32Array(n);
    this.y = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const [x, y] = project(positions.lon[i] / scale, positions.lat[i] / scale);
      this.x[i] = x;
      this.y[i] = y;
    }
    this.status = new Uint8Array(n).fill(ONLINE);
    this.index = new Map();
    for (let i = 0; i < n; i++) this.index.set(this.ids[i], i);
    this.registry = positions.registry;
    this.version = null; // states must start again with a reset
  }

  // Apply a /map/states answer; returns true when anything changed.
  applyStates(answer) {
    if (answer.reset) this.status.fill(answer.default_status === "online" ? ONLINE : 0);
    let changed = answer.reset;
    for (let k = 0; k < answer.ids.length; k++) {
      const i = this.index.get(answer.ids[k]);
      const s = STATUS_ORDER.indexOf(answer.status[k]);
      if (i !== undefined && s >= 0 && this.status[i] !== s) {
        this.status[i] = s;
        changed = true;
      }
    }
    this.version = answer.version;
    return changed;
  }

  // A reading just arrived from id: it is online now (until the next states poll says otherwise).
  markOnline(id) {
    const i = this.index.get(id);
    if (i === undefined || this.status[i] === ONLINE) return false;
    this.status[i] = ONLINE;
    return true;
  }

  statusOf(i) {
    return STATUS_ORDER[this.status[i]];
  }

  kindOf(i) {
    return this.kinds[this.kind[i]] ?? null;
  }
}
