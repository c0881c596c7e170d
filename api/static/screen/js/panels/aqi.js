// District AQI with category colour (HJ 633, via the API) and primary pollutant.

import { esc, textOn } from "../format.js";
import { districtName, lang, t } from "../i18n.js";

export function renderAqi(root, districts) {
  if (!districts) return;
  const rows = districts
    .map((d) => {
      const a = d.aqi;
      const chip = a.aqi === null
        ? `<span class="muted">${t("no_data")}</span>`
        : `<span class="chip" data-district="${esc(d.district)}" data-colour="${esc(a.colour)}" style="background:${esc(a.colour)};color:${textOn(a.colour)}">${a.aqi}</span>`;
      const category = a.aqi === null ? "" : esc(lang() === "zh" ? a.category_zh : a.category_en);
      const primary = a.primary_pollutants.length ? esc(a.primary_pollutants.join(", ")) : "–";
      return `<tr><td>${esc(districtName(d.district))}</td><td>${chip}</td><td>${category}</td>` +
        `<td>${primary}</td><td class="num muted">${a.stations_reporting}/${a.stations}</td></tr>`;
    })
    .join("");
  root.innerHTML = `<table><tr><th>${t("district")}</th><th>${t("aqi")}</th><th>${t("category")}</th>` +
    `<th>${t("primary")}</th><th class="num">${t("stations")}</th></tr>${rows}</table>`;
}
