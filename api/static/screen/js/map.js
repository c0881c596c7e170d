// The city map: one canvas for districts and devices, one overlay canvas for what moves
// (devices that just reported, the selected device). No tiles, no DOM markers: 100 k devices are
// 100 k fillRect calls, a few tens of milliseconds.

import { STATUS_COLOURS, STATUS_ORDER } from "./colours.js";
import { districtFill } from "./districts.js";
import { districtName } from "./i18n.js";

// Problems drawn last, on top of the healthy majority.
const DRAW_ORDER = ["online", "unknown", "silent", "offline"].map((s) => STATUS_ORDER.indexOf(s));
const FLASH_MS = 1600;

// "#rrggbb" as one pixel of a little-endian RGBA Uint32Array (alpha 255).
function rgba32(hex) {
  const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
  return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
}
const PICK_RADIUS_PX = 8;

export class CityMap {
  constructor(canvas, overlay) {
    this.canvas = canvas;
    this.overlay = overlay;
    this.ctx = canvas.getContext("2d");
    this.octx = overlay.getContext("2d");
    this.store = null;
    this.regions = [];
    this.summaries = new Map();
    this.layer = "aqi";
    this.kindFilter = null;
    this.bins = null;
    this.selected = null;
    this.flashes = new Map();
    this.view = null; // {cx, cy, scale}: projected centre and pixels per projected unit
    this.bounds = null;
    this.drawn = 0;
    this.fills = {};
    this.drawMs = 0;
    this.onSelect = () => {};
    this.onView = () => {};
    this.pending = false;
    this.animating = false;
    this.listen();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
    this.resize();
  }

  // --- data -------------------------------------------------------------------------------------

  setDevices(store) {
    this.store = store;
    this.bins = null;
    this.request();
  }

  setBins(bins) {
    this.bins = bins;
    this.request();
  }

  setRegions(regions) {
    this.regions = regions;
    if (!this.bounds && regions.length) this.fitTo(regions.flatMap((r) => r.polygon));
    this.request();
  }

  setSummaries(districts) {
    this.summaries = new Map(districts.map((d) => [d.district, d]));
    this.request();
  }

  setLayer(layer) {
    this.layer = layer;
    this.request();
  }

  setKindFilter(kindIndex) {
    this.kindFilter = kindIndex;
    this.request();
  }

  select(index) {
    this.selected = index;
    this.animate();
  }

  flash(index) {
    this.flashes.set(index, performance.now());
    this.animate();
  }

  // --- view -------------------------------------------------------------------------------------

  fitTo(points) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const [x, y] of points) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x);
      y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    this.bounds = [x0, y0, x1, y1];
    this.fit();
  }

  fit() {
    if (!this.bounds) return;
    const [x0, y0, x1, y1] = this.bounds;
    const w = this.canvas.clientWidth || 1;
    const h = this.canvas.clientHeight || 1;
    const scale = 0.94 * Math.min(w / (x1 - x0 || 1), h / (y1 - y0 || 1));
    this.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale };
    this.request();
  }

  toScreen(x, y) {
    const v = this.view;
    return [this.canvas.clientWidth / 2 + (x - v.cx) * v.scale, this.canvas.clientHeight / 2 - (y - v.cy) * v.scale];
  }

  toPlane(px, py) {
    const v = this.view;
    return [v.cx + (px - this.canvas.clientWidth / 2) / v.scale, v.cy - (py - this.canvas.clientHeight / 2) / v.scale];
  }

  // The visible area in degrees: [min_lon, min_lat, max_lon, max_lat] (for bbox= queries).
  visibleBox(cosLat0) {
    const [x0, y1] = this.toPlane(0, 0);
    const [x1, y0] = this.toPlane(this.canvas.clientWidth, this.canvas.clientHeight);
    return [x0 / cosLat0, y0, x1 / cosLat0, y1];
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    for (const c of [this.canvas, this.overlay]) {
      c.width = Math.max(1, Math.round(c.clientWidth * dpr));
      c.height = Math.max(1, Math.round(c.clientHeight * dpr));
      c.getContext("2d").setTransform(dpr, 0, 0, dpr, 0, 0);
    }
    if (this.bounds) this.fit();
    this.request();
  }

  listen() {
    let drag = null;
    const c = this.canvas;
    c.addEventListener("mousedown", (e) => { drag = { x: e.offsetX, y: e.offsetY, moved: false }; });
    window.addEventListener("mouseup", (e) => {
      if (drag && !drag.moved && e.target === c) this.pick(e.offsetX, e.offsetY);
      if (drag && drag.moved) this.onView();
      drag = null;
    });
    c.addEventListener("mousemove", (e) => {
      if (!drag || !this.view) return;
      const dx = e.offsetX - drag.x;
      const dy = e.offsetY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (!drag.moved) return;
      this.view.cx -= dx / this.view.scale;
      this.view.cy += dy / this.view.scale;
      drag.x = e.offsetX;
      drag.y = e.offsetY;
      this.request();
    });
    c.addEventListener("wheel", (e) => {
      if (!this.view) return;
      e.preventDefault();
      const [x, y] = this.toPlane(e.offsetX, e.offsetY);
      const factor = Math.exp(-e.deltaY * 0.0015);
      this.view.scale *= factor;
      // Keep the point under the cursor where it is.
      this.view.cx = x - (x - this.view.cx) / factor;
      this.view.cy = y - (y - this.view.cy) / factor;
      this.request();
      clearTimeout(this.viewTimer);
      this.viewTimer = setTimeout(() => this.onView(), 250);
    }, { passive: false });
    c.addEventListener("dblclick", () => this.fit());
  }

  pick(px, py) {
    const s = this.store;
    if (!s || !this.view) return;
    let best = -1;
    let bestD = PICK_RADIUS_PX * PICK_RADIUS_PX;
    const w2 = this.canvas.clientWidth / 2, h2 = this.canvas.clientHeight / 2;
    const { cx, cy, scale } = this.view;
    for (let i = 0; i < s.count; i++) {
      if (this.kindFilter !== null && s.kind[i] !== this.kindFilter) continue;
      const dx = w2 + (s.x[i] - cx) * scale - px;
      const dy = h2 - (s.y[i] - cy) * scale - py;
      const d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = i; }
    }
    if (best >= 0) this.onSelect(s.ids[best]);
  }

  // --- drawing ----------------------------------------------------------------------------------

  request() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
      this.drawOverlay();
    });
  }

  draw() {
    const t0 = performance.now();
    const ctx = this.ctx;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    ctx.clearRect(0, 0, w, h);
    if (!this.view) return;
    this.drawDistricts(ctx);
    if (this.bins) this.drawBins(ctx);
    else this.drawDevices(ctx, w, h);
    this.drawLabels(ctx);
    this.drawMs = performance.now() - t0;
  }

  trace(ctx, polygon) {
    ctx.beginPath();
    polygon.forEach(([x, y], i) => {
      const [sx, sy] = this.toScreen(x, y);
      if (i === 0) ctx.moveTo(sx, sy); else ctx.lineTo(sx, sy);
    });
    ctx.closePath();
  }

  drawDistricts(ctx) {
    const fills = {};
    for (const r of this.regions) {
      if (!r.polygon.length) continue;
      const fill = this.layer === "none" ? null : districtFill(this.layer, this.summaries.get(r.slug));
      fills[r.slug] = fill;
      this.trace(ctx, r.polygon);
      ctx.globalAlpha = fill ? 0.34 : 1;
      ctx.fillStyle = fill || "#101b2f";
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.strokeStyle = "#3a5378";
      ctx.lineWidth = 1.2;
      ctx.stroke();
    }
    // What was drawn, for the legend and the browser tests (window.cityScreen.map.fills).
    this.fills = fills;
  }

  // Dots are written straight into a pixel buffer (one Uint32 per pixel), then composited over
  // the districts in one drawImage: 100 k devices cost a few ms instead of 100 k fillRect calls.
  drawDevices(ctx, w, h) {
    const s = this.store;
    this.drawn = 0;
    if (!s) return;
    const W = this.canvas.width, H = this.canvas.height;
    const dpr = W / Math.max(1, w);
    if (!this.dots || this.dots.width !== W || this.dots.height !== H) {
      this.dots = document.createElement("canvas");
      this.dots.width = W;
      this.dots.height = H;
      this.dotsCtx = this.dots.getContext("2d");
      this.dotsImage = this.dotsCtx.createImageData(W, H);
    }
    const pixels = new Uint32Array(this.dotsImage.data.buffer);
    pixels.fill(0);
    const { cx, cy, scale } = this.view;
    // Dots grow as one zooms in; a dense city stays a texture rather than a blot.
    const base = s.count > 20000 ? 1.4 : 2.2;
    const size = Math.max(1, Math.round(dpr * Math.min(6, base * Math.max(1, Math.sqrt(scale / 1500)))));
    const half = size / 2;
    const k = scale * dpr, ox = (w / 2) * dpr - cx * k, oy = (h / 2) * dpr + cy * k;
    const filter = this.kindFilter;
    let drawn = 0;
    for (const st of DRAW_ORDER) {
      const colour = rgba32(STATUS_COLOURS[STATUS_ORDER[st]]);
      for (let i = 0; i < s.count; i++) {
        if (s.status[i] !== st || (filter !== null && s.kind[i] !== filter)) continue;
        const x0 = Math.round(ox + s.x[i] * k - half);
        const y0 = Math.round(oy - s.y[i] * k - half);
        if (x0 < 0 || y0 < 0 || x0 + size > W || y0 + size > H) continue;
        for (let dy = 0; dy < size; dy++) {
          const row = (y0 + dy) * W + x0;
          for (let dx = 0; dx < size; dx++) pixels[row + dx] = colour;
        }
        drawn++;
      }
    }
    this.dotsCtx.putImageData(this.dotsImage, 0, 0);
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(this.dots, 0, 0);
    ctx.restore();
    this.drawn = drawn;
  }

  drawBins(ctx) {
    const b = this.bins;
    const cell = b.cell_deg;
    const maxN = Math.max(1, ...b.n);
    this.drawn = 0;
    for (let k = 0; k < b.x.length; k++) {
      const lon = b.x[k] * cell, lat = b.y[k] * cell;
      const [sx0, sy0] = this.toScreen(lon * b.cos, lat + cell);
      const [sx1, sy1] = this.toScreen((lon + cell) * b.cos, lat);
      const share = b.down[k] / b.n[k];
      ctx.globalAlpha = 0.25 + 0.75 * (Math.log1p(b.n[k]) / Math.log1p(maxN));
      ctx.fillStyle = share > 0.1 ? STATUS_COLOURS.offline : share > 0.02 ? STATUS_COLOURS.silent : STATUS_COLOURS.online;
      ctx.fillRect(sx0, sy0, Math.max(1, sx1 - sx0), Math.max(1, sy1 - sy0));
    }
    ctx.globalAlpha = 1;
  }

  drawLabels(ctx) {
    ctx.font = "600 13px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (const r of this.regions) {
      const [sx, sy] = this.toScreen(r.label[0], r.label[1]);
      const name = districtName(r.slug);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(8,14,26,.85)";
      ctx.strokeText(name, sx, sy);
      ctx.fillStyle = "#e8f0ff";
      ctx.fillText(name, sx, sy);
    }
  }

  animate() {
    if (this.animating) return;
    this.animating = true;
    const step = () => {
      const busy = this.drawOverlay();
      if (busy) requestAnimationFrame(step);
      else this.animating = false;
    };
    requestAnimationFrame(step);
  }

  // Rings around devices that just reported, and the selected device; true while any fades.
  drawOverlay() {
    const ctx = this.octx;
    ctx.clearRect(0, 0, this.overlay.clientWidth, this.overlay.clientHeight);
    const s = this.store;
    if (!s || !this.view) return false;
    const now = performance.now();
    ctx.lineWidth = 1.5;
    for (const [i, t] of this.flashes) {
      const age = (now - t) / FLASH_MS;
      if (age >= 1) { this.flashes.delete(i); continue; }
      if (this.kindFilter !== null && s.kind[i] !== this.kindFilter) continue;
      const [sx, sy] = this.toScreen(s.x[i], s.y[i]);
      ctx.strokeStyle = `rgba(120, 220, 255, ${1 - age})`;
      ctx.beginPath();
      ctx.arc(sx, sy, 3 + 9 * age, 0, 2 * Math.PI);
      ctx.stroke();
    }
    if (this.selected !== null) {
      const [sx, sy] = this.toScreen(s.x[this.selected], s.y[this.selected]);
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(sx, sy, 8, 0, 2 * Math.PI);
      ctx.stroke();
    }
    return this.flashes.size > 0;
  }
}
