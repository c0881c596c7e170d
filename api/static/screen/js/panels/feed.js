// The live feed: readings as /stream delivers them, newest first, redrawn at most every 400 ms
// (a district-sized city delivers dozens a second).

import { esc, num, when } from "../format.js";
import { districtName, kindName, t } from "../i18n.js";

const KEEP = 40;
const REDRAW_MS = 400;
const SHOWN_METRICS = 3;

export class LiveFeed {
  constructor(root, onDevice) {
    this.root = root;
    this.onDevice = onDevice;
    this.items = [];
    this.received = 0;
    // Only readings of this kind (the map's kind filter), or all when null.
    this.kind = null;
    this.timer = null;
    this.root.innerHTML = `<div class="muted">${t("feed_waiting")}</div>`;
    this.root.addEventListener("click", (e) => {
      const item = e.target.closest("[data-device]");
      if (item) this.onDevice(item.dataset.device);
    });
  }

  add(reading) {
    this.received++;
    if (this.kind && reading.kind !== this.kind) return;
    this.items.unshift(reading);
    if (this.items.length > KEEP) this.items.length = KEEP;
    if (!this.timer) this.timer = setTimeout(() => this.render(), REDRAW_MS);
  }

  setKind(kind) {
    this.kind = kind || null;
    this.items = this.items.filter((r) => !this.kind || r.kind === this.kind);
    this.render();
  }

  render() {
    this.timer = null;
    if (!this.items.length) {
      this.root.innerHTML = `<div class="muted">${t("feed_waiting")}</div>`;
      return;
    }
    this.root.innerHTML = this.items
      .map((r) => {
        const metrics = Object.entries(r.metrics)
          .slice(0, SHOWN_METRICS)
          .map(([name, m]) => `${esc(name)} ${num(m.value)} ${esc(m.unit)}`)
          .join(" · ");
        return `<div class="feed-item" data-device="${esc(r.device_id)}" data-seq="${esc(r.seq)}">` +
          `<span class="when">${when(r.time)}</span><b>${esc(r.device_id)}</b> ` +
          `<span class="muted">${esc(kindName(r.kind))} · ${esc(districtName(r.district))}</span>` +
          `<div class="what">${metrics}</div></div>`;
      })
      .join("");
  }
}
