// City overview: devices per state and kind, key metrics, active alerts (from /city/overview).

import { STATUS_COLOURS } from "../colours.js";
import { esc, int, num } from "../format.js";
import { kindName, t } from "../i18n.js";

export function renderOverview(root, overview) {
  if (!overview) return;
  const d = overview.devices;
  const big = ["online", "offline", "silent", "unknown"]
    .map((s) => `<div><b style="color:${STATUS_COLOURS[s]}" data-count="${s}">${int(d[s])}</b><span>${t(s)}</span></div>`)
    .join("");
  const kinds = overview.devices_by_kind
    .map(
      (k) => `<tr><td>${esc(kindName(k.kind))}</td><td class="num">${int(k.total)}</td>` +
        `<td class="num" style="color:${STATUS_COLOURS.online}">${int(k.online)}</td>` +
        `<td class="num" style="color:${STATUS_COLOURS.offline}">${int(k.offline)}</td>` +
        `<td class="num" style="color:${STATUS_COLOURS.silent}">${int(k.silent)}</td>` +
        `<td class="num" style="color:${STATUS_COLOURS.unknown}">${int(k.unknown)}</td></tr>`,
    )
    .join("");
  const metrics = overview.key_metrics
    .filter((m) => m.devices > 0)
    .map(
      (m) => `<tr><td>${esc(kindName(m.kind))}</td><td>${esc(m.metric)}</td>` +
        `<td class="num">${num(m.mean)}</td><td class="muted">${esc(m.unit)}</td></tr>`,
    )
    .join("");
  root.innerHTML =
    `<div class="big-numbers">${big}</div>` +
    `<div class="muted">${t("devices")} ${t("total")} <b id="devices-total" data-total="${d.total}">${int(d.total)}</b>` +
    ` · ${t("alerts_active")} <b>${int(overview.alerts.active)}</b></div>` +
    `<table><tr><th>${t("kind")}</th><th class="num">${t("total")}</th><th class="num">${t("online")}</th>` +
    `<th class="num">${t("offline")}</th><th class="num">${t("silent")}</th><th class="num">${t("unknown")}</th></tr>${kinds}</table>` +
    (metrics ? `<table style="margin-top:6px"><tr><th>${t("key_metrics")}</th><th>${t("metric")}</th><th class="num">${t("mean")}</th><th></th></tr>${metrics}</table>` : "");
}
