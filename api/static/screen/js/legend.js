// The map legend: device states, and the key of the district layer shown.

import { OFFLINE_STEPS, RAIN_WARNING_COLOURS, STATUS_COLOURS, STATUS_ORDER } from "./colours.js";
import { esc } from "./format.js";
import { lang, t } from "./i18n.js";

const row = (colour, label) => `<div><span class="sw" style="background:${colour}"></span>${esc(label)}</div>`;

export function renderLegend(root, layer, catalog) {
  let html = `<b>${t("legend_status")}</b>` + STATUS_ORDER.map((s) => row(STATUS_COLOURS[s], t(s))).join("");
  if (layer === "aqi" && catalog) {
    html += `<b>${t("legend_aqi")}</b>` + catalog.aqi_categories
      .map((c) => row(c.colour, `${c.aqi_low}-${c.aqi_high} ${lang() === "zh" ? c.name_zh : c.name_en}`))
      .join("");
  } else if (layer === "rain" && catalog) {
    html += `<b>${t("legend_rain")}</b>` + catalog.rain_warnings
      .filter((w) => RAIN_WARNING_COLOURS[w.key])
      .map((w) => row(RAIN_WARNING_COLOURS[w.key], lang() === "zh" ? w.name_zh : w.name_en))
      .join("");
  } else if (layer === "offline") {
    let low = 0;
    html += `<b>${t("legend_offline")}</b>` + OFFLINE_STEPS.map(([limit, colour]) => {
      const label = Number.isFinite(limit) ? `${low * 100}-${limit * 100} %` : `≥ ${low * 100} %`;
      low = limit;
      return row(colour, label);
    }).join("");
  }
  root.innerHTML = html;
}
