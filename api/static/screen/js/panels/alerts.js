// Alerts, newest first: the last ones from /alerts at start (and after a reconnect), then live
// transitions from /stream (an "open" adds one, a "closed" marks it closed).

import { esc, num, when } from "../format.js";
import { districtName, t } from "../i18n.js";

const KEEP = 60;

export class AlertsPanel {
  constructor(root, onDevice) {
    this.root = root;
    this.onDevice = onDevice;
    this.items = [];
  }

  load(page) {
    this.items = page.items.map((a) => ({
      key: `${a.device_id}|${a.rule}|${a.opened_at}`,
      device_id: a.device_id,
      district: a.district,
      rule: a.rule,
      severity: a.severity,
      time: a.opened_at,
      value: a.value,
      closed: a.state === "closed",
      detail: a.detail,
      fresh: false,
    }));
    this.render();
  }

  live(event) {
    if (event.state === "closed") {
      const open = this.items.find((a) => a.device_id === event.device_id && a.rule === event.rule && !a.closed);
      if (open) open.closed = true;
    } else {
      this.items.unshift({
        key: `${event.device_id}|${event.rule}|${event.time}`,
        device_id: event.device_id,
        district: event.district,
        rule: event.rule,
        severity: event.severity,
        time: event.time,
        value: event.value,
        closed: false,
        detail: event.detail,
        fresh: true,
      });
      this.items.length = Math.min(this.items.length, KEEP);
    }
    this.render();
  }

  render() {
    if (!this.items.length) {
      this.root.innerHTML = `<div class="muted">${t("no_alerts")}</div>`;
      return;
    }
    this.root.innerHTML = this.items
      .map(
        (a) => `<div class="alert-item ${esc(a.severity)}${a.closed ? " closed" : ""}${a.fresh ? " fresh" : ""}" data-device="${esc(a.device_id)}" title="${esc(a.detail)}">` +
          `<span class="when">${when(a.time)}</span><b class="rule">${esc(a.rule)}</b> ${esc(a.device_id)} ` +
          `<span class="muted">${esc(districtName(a.district))} ${a.value === null || a.value === undefined ? "" : num(a.value)}</span></div>`,
      )
      .join("");
    for (const a of this.items) a.fresh = false;
    for (const el of this.root.querySelectorAll("[data-device]")) el.onclick = () => this.onDevice(el.dataset.device);
  }
}
