// Surface-water class of every water-quality station (GB 3838-2002, from /city/water-quality/stations).

import { WATER_CLASS_COLOURS } from "../colours.js";
import { esc, textOn, when } from "../format.js";
import { districtName, t } from "../i18n.js";

export function renderWater(root, answer, onDevice) {
  if (!answer) return;
  const rows = answer.items
    .map((s) => {
      const colour = WATER_CLASS_COLOURS[s.water_class];
      const cls = s.water_class
        ? `<span class="chip" style="background:${colour};color:${textOn(colour)}">${esc(s.water_class)}</span>`
        : `<span class="muted">–</span>`;
      return `<tr data-device="${esc(s.device_id)}" style="cursor:pointer"><td>${esc(s.device_id)}</td>` +
        `<td>${esc(districtName(s.district))}</td><td>${cls}</td>` +
        `<td class="muted">${esc(s.deciding_parameters.join(", ") || "–")}</td><td class="muted">${when(s.analysis_time)}</td></tr>`;
    })
    .join("");
  root.innerHTML = `<table><tr><th>${t("station")}</th><th>${t("district")}</th><th>${t("water_class")}</th>` +
    `<th>${t("deciding")}</th><th>${t("analysed")}</th></tr>${rows}</table>`;
  for (const tr of root.querySelectorAll("tr[data-device]")) tr.onclick = () => onDevice(tr.dataset.device);
}
