// District regions and their fills.
//
// Shapes: no administrative boundary data is shipped (Chinese basemap data needs approval numbers).
// Each district's region is its Voronoi cell: the points nearer its catalog centre
// (cityneuron/catalog.py, DOMAIN.md section 1) than any other district's centre, clipped to the
// convex hull of every device position grown by a margin. Schematic, and said so on the map.

import { convexHull, clipNearer, grow, centroid } from "./geometry.js";
import { project } from "./devices.js";
import { RAIN_WARNING_COLOURS, offlineColour } from "./colours.js";

// How far the city outline reaches beyond the outermost device: 0.02 deg, about 2 km.
const MARGIN = 0.02;

export function districtRegions(catalogDistricts, points) {
  const centres = catalogDistricts.map((d) => project(d.lon, d.lat));
  let outline = convexHull(points.concat(centres));
  if (outline.length < 3) return [];
  outline = grow(outline, MARGIN);
  return catalogDistricts.map((d, i) => {
    let cell = outline;
    for (let j = 0; j < centres.length && cell.length; j++) {
      if (j !== i) cell = clipNearer(cell, centres[i], centres[j]);
    }
    return { slug: d.slug, polygon: cell, label: cell.length ? centroid(cell) : centres[i] };
  });
}

// The fill of a district under `layer`, from its /city/overview summary; null leaves it unfilled.
export function districtFill(layer, summary) {
  if (!summary) return null;
  if (layer === "aqi") return summary.aqi && summary.aqi.colour ? summary.aqi.colour : null;
  if (layer === "rain") return RAIN_WARNING_COLOURS[summary.rain && summary.rain.warning] ?? null;
  if (layer === "offline") {
    const d = summary.devices;
    if (!d || !d.total) return null;
    return offlineColour((d.offline + d.silent) / d.total);
  }
  return null;
}
