// Rain per district: last hour, 24 h and the rainstorm warning signal.

import { RAIN_WARNING_COLOURS } from "../colours.js";
import { esc, num, textOn } from "../format.js";
import { districtName, lang, t } from "../i18n.js";

export function renderRain(root, districts, catalog) {
  if (!districts) return;
  const names = new Map((catalog ? catalog.rain_warnings : []).map((w) => [w.key, lang() === "zh" ? w.name_zh : w.name_en]));
  const rows = districts
    .map((d) => {
      const r = d.rain;
      const colour = RAIN_WARNING_COLOURS[r.warning];
      const warning = colour
        ? `<span class="chip" style="background:${colour};color:${textOn(colour)}">${esc(names.get(r.warning) || r.warning)}</span>`
        : `<span class="muted">${r.warning ? t("no_warning") : "–"}</span>`;
      const cat = r.last_hour_category ? esc(lang() === "zh" ? r.last_hour_category.name_zh : r.last_hour_category.name_en) : "";
      return `<tr><td>${esc(districtName(d.district))}</td><td class="num">${num(r.rain_1h_mm)}</td>` +
        `<td class="muted">${cat}</td><td class="num">${num(r.rain_24h_mm)}</td><td>${warning}</td></tr>`;
    })
    .join("");
  root.innerHTML = `<table><tr><th>${t("district")}</th><th class="num">${t("rain_1h")} mm</th><th></th>` +
    `<th class="num">${t("rain_24h")} mm</th><th>${t("warning")}</th></tr>${rows}</table>`;
}
