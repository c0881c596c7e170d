// Plane geometry for the district regions: convex hull and half-plane clipping.
// Points are [x, y] in the map's projected plane (see map.js: x = lon * cos(lat0), y = lat).

// Andrew's monotone chain; returns the hull counter-clockwise without repeating the first point.
export function convexHull(points) {
  const pts = points.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (pts.length < 3) return pts;
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower = [];
  for (const p of pts) {
    while (lower.length >= 2 && cross(lower[lower.length - 2], lower[lower.length - 1], p) <= 0) lower.pop();
    lower.push(p);
  }
  const upper = [];
  for (let i = pts.length - 1; i >= 0; i--) {
    const p = pts[i];
    while (upper.length >= 2 && cross(upper[upper.length - 2], upper[upper.length - 1], p) <= 0) upper.pop();
    upper.push(p);
  }
  upper.pop();
  lower.pop();
  return lower.concat(upper);
}

// The part of a convex polygon on the side of the perpendicular bisector of (a, b) nearer a:
// one Sutherland-Hodgman step. Intersecting these for every other centre b gives a's Voronoi cell.
export function clipNearer(polygon, a, b) {
  const nx = b[0] - a[0];
  const ny = b[1] - a[1];
  const mid = (nx * (a[0] + b[0]) + ny * (a[1] + b[1])) / 2;
  const inside = (p) => nx * p[0] + ny * p[1] <= mid;
  const out = [];
  for (let i = 0; i < polygon.length; i++) {
    const p = polygon[i];
    const q = polygon[(i + 1) % polygon.length];
    const pin = inside(p);
    const qin = inside(q);
    if (pin) out.push(p);
    if (pin !== qin) {
      const dp = nx * p[0] + ny * p[1] - mid;
      const dq = nx * q[0] + ny * q[1] - mid;
      const s = dp / (dp - dq);
      out.push([p[0] + s * (q[0] - p[0]), p[1] + s * (q[1] - p[1])]);
    }
  }
  return out;
}

// A convex polygon grown outwards from its centroid by `margin` (same units).
export function grow(polygon, margin) {
  const cx = polygon.reduce((s, p) => s + p[0], 0) / polygon.length;
  const cy = polygon.reduce((s, p) => s + p[1], 0) / polygon.length;
  return polygon.map(([x, y]) => {
    const d = Math.hypot(x - cx, y - cy) || 1;
    return [x + ((x - cx) / d) * margin, y + ((y - cy) / d) * margin];
  });
}

export function centroid(polygon) {
  // Area-weighted centroid (shoelace); falls back to the vertex mean for degenerate polygons.
  let a = 0, cx = 0, cy = 0;
  for (let i = 0; i < polygon.length; i++) {
    const [x0, y0] = polygon[i];
    const [x1, y1] = polygon[(i + 1) % polygon.length];
    const f = x0 * y1 - x1 * y0;
    a += f;
    cx += (x0 + x1) * f;
    cy += (y0 + y1) * f;
  }
  if (Math.abs(a) < 1e-12) {
    return [polygon.reduce((s, p) => s + p[0], 0) / polygon.length, polygon.reduce((s, p) => s + p[1], 0) / polygon.length];
  }
  return [cx / (3 * a), cy / (3 * a)];
}
