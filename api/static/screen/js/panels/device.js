// One device: registry and state, latest values with units and each value's own time, data
// quality counters, a chart of any metric, and its commands. Latest values are polled with ETag
// while the panel is open (a 304 while the device is quiet).

import { ApiError, getJSON } from "../api.js";
import { STATUS_COLOURS } from "../colours.js";
import { esc, int, num, when } from "../format.js";
import { districtName, kindName, t } from "../i18n.js";
import { Poller } from "../poller.js";
import { MetricChart, RANGES } from "./chart.js";
import { CommandsBox } from "./commands.js";

const LATEST_POLL_MS = 5000;

export class DevicePanel {
  constructor(root, catalog) {
    this.root = root;
    this.catalog = catalog;
    this.device = null;
    this.poller = null;
    this.chart = null;
    this.commands = null;
    this.range = "24h";
    this.metric = null;
    this.onClose = () => {};
  }

  kindInfo(name) {
    return this.catalog.kinds.find((k) => k.name === name) || null;
  }

  close() {
    if (this.poller) this.poller.stop();
    if (this.chart) this.chart.destroy();
    if (this.commands) this.commands.close();
    this.poller = this.chart = this.commands = this.device = null;
    this.root.hidden = true;
    this.root.innerHTML = "";
    this.onClose();
  }

  async open(id) {
    this.close();
    this.root.hidden = false;
    this.root.innerHTML = `<button class="close" type="button">×</button><h3>${esc(id)}</h3>`;
    this.root.querySelector(".close").onclick = () => this.close();
    let detail;
    try {
      ({ body: detail } = await getJSON(`/devices/${encodeURIComponent(id)}`));
    } catch (err) {
      this.root.insertAdjacentHTML("beforeend", `<div class="muted">${err instanceof ApiError && err.status === 404 ? t("not_found") : esc(err.message)}</div>`);
      return false;
    }
    this.device = detail;
    const kind = this.kindInfo(detail.kind);
    this.metric = kind && kind.metrics.length ? kind.metrics[0].name : null;
    this.root.innerHTML =
      `<button class="close" type="button" title="${t("close")}">×</button>` +
      `<h3 data-device="${esc(id)}">${esc(id)}</h3>` +
      `<div class="muted">${esc(kindName(detail.kind))} · ${esc(districtName(detail.district))} · ${num(detail.lat, 5)}, ${num(detail.lon, 5)}</div>` +
      `<section id="dp-status"></section>` +
      `<section><h4>${t("latest")}</h4><div id="dp-latest" class="muted">…</div></section>` +
      `<section><h4>${t("chart")}</h4><div class="ranges" id="dp-ranges"></div><div id="dp-chart" class="chart"></div><div id="dp-chart-info" class="muted"></div></section>` +
      `<section id="dp-commands"></section>`;
    this.root.querySelector(".close").onclick = () => this.close();
    this.renderStatus(detail);
    if (kind) {
      this.renderRanges(kind);
      this.chart = new MetricChart(this.root.querySelector("#dp-chart"));
      this.showChart(kind);
      this.commands = new CommandsBox(this.root.querySelector("#dp-commands"), id, kind);
      this.commands.render();
    }
    this.poller = new Poller("latest", LATEST_POLL_MS, () => this.refreshLatest(id));
    this.poller.start();
    return true;
  }

  renderStatus(d) {
    const q = d.quality;
    this.root.querySelector("#dp-status").innerHTML =
      `<h4>${t("status")}</h4><span class="dot" style="background:${STATUS_COLOURS[d.status]}"></span>` +
      `<b id="dp-state">${esc(t(d.status))}</b> · ${t("last_seen")} ${when(d.last_seen)}` +
      `<h4 style="margin-top:6px">${t("quality")}</h4>` +
      `<span>${t("messages")} <b>${int(q.messages)}</b></span> · <span>${t("seq_gaps")} <b>${int(q.seq_gaps)}</b></span> · ` +
      `<span>${t("seq_duplicates")} <b>${int(q.seq_duplicates)}</b></span> · <span>${t("seq_reordered")} <b>${int(q.seq_reordered)}</b></span>`;
  }

  async refreshLatest(id) {
    if (!this.device || this.device.device_id !== id) return;
    const box = this.root.querySelector("#dp-latest");
    let latest;
    try {
      ({ body: latest } = await getJSON(`/devices/${encodeURIComponent(id)}/latest`));
    } catch (err) {
      if (box) box.textContent = err.code === "no_reading" ? t("no_reading") : err.message;
      return;
    }
    if (!box) return;
    // Each metric's own time when the API gives one (issue 13), else the reading's time.
    const rows = Object.entries(latest.metrics)
      .map(([name, m]) => `<tr data-metric="${esc(name)}"><td>${esc(name)}</td><td class="num"><b>${num(m.value, 2)}</b></td>` +
        `<td class="muted">${esc(m.unit)}</td><td class="muted">${when(m.time ?? latest.time)}</td></tr>`)
      .join("");
    box.classList.remove("muted");
    box.innerHTML = `<table><tr><th>${t("metric")}</th><th class="num">${t("value")}</th><th></th><th>${t("time")}</th></tr>${rows}</table>`;
  }

  renderRanges(kind) {
    const box = this.root.querySelector("#dp-ranges");
    const buttons = Object.keys(RANGES)
      .map((r) => `<button type="button" data-range="${r}" class="${r === this.range ? "active" : ""}">${r}</button>`)
      .join("");
    const options = kind.metrics
      .map((m) => `<option value="${esc(m.name)}"${m.name === this.metric ? " selected" : ""}>${esc(m.name)} (${esc(m.unit)})</option>`)
      .join("");
    box.innerHTML = `${buttons}<select id="dp-metric">${options}</select>`;
    for (const b of box.querySelectorAll("button")) {
      b.onclick = () => {
        this.range = b.dataset.range;
        for (const o of box.querySelectorAll("button")) o.classList.toggle("active", o === b);
        this.showChart(kind);
      };
    }
    box.querySelector("#dp-metric").onchange = (e) => {
      this.metric = e.target.value;
      this.showChart(kind);
    };
  }

  async showChart(kind) {
    const metric = kind.metrics.find((m) => m.name === this.metric);
    if (!metric || !this.chart) return;
    const info = this.root.querySelector("#dp-chart-info");
    try {
      const result = await this.chart.show(this.device.device_id, kind, metric, this.range);
      if (info) info.textContent = `${t("bucket")} ${result.bucket} · ${result.points} ${t("points")}`;
    } catch (err) {
      if (info) info.textContent = err.message;
    }
  }
}
