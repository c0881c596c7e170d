// The operations screen: wires the API, the map, the panels and the live stream together.
// Each concern lives in its own module (see docs/screen.md for the map of files).

import { getJSON } from "./api.js";
import { renderLegend } from "./legend.js";
import { LiveStream } from "./live.js";
import { CityMap } from "./map.js";
import { MAX_DRAWN, MapData } from "./mapdata.js";
import { apply, kindName, lang, onLanguage, setLanguage, t, useCatalog } from "./i18n.js";
import { Poller } from "./poller.js";
import { AlertsPanel } from "./panels/alerts.js";
import { renderAqi } from "./panels/aqi.js";
import { DevicePanel } from "./panels/device.js";
import { LiveFeed } from "./panels/feed.js";
import { renderOverview } from "./panels/overview.js";
import { renderRain } from "./panels/rain.js";
import { renderWater } from "./panels/water.js";

const OVERVIEW_POLL_MS = 10000;
const STATES_POLL_MS = 5000;
// Water-quality stations analyse every 4 h (DOMAIN.md section 2): every 10 min is plenty.
const WATER_POLL_MS = 600000;
const ALERTS_SHOWN = 30;

const $ = (id) => document.getElementById(id);
const body = (id) => $(id).querySelector(".body");

// What the browser tests and the benchmark read (tests/test_screen_browser.py, bench/screen.py).
const probe = (window.cityScreen = { ready: false, drawnAt: null, errors: [] });

async function main() {
  apply();
  // The first answers in parallel: catalog, overview, and (for a city small enough to draw dot by
  // dot, which the positions request finds out for itself) the positions.
  // The city-wide states only once the overview says the city is drawn dot by dot: for the 1:1
  // city that list would be millions of devices (the map asks per view instead).
  const overviewFirst = getJSON("/city/overview");
  const first = Promise.all([
    getJSON("/catalog"),
    overviewFirst,
    getJSON("/map/positions", { max: MAX_DRAWN }).catch(() => null),
    overviewFirst.then(({ body }) => (body.devices.total <= MAX_DRAWN ? getJSON("/map/states") : { body: null })),
  ]);
  const [{ body: catalog }, overviewAnswer, positionsAnswer, statesAnswer] = await first;
  useCatalog(catalog);
  const map = new CityMap($("map"), $("map-overlay"));
  const data = new MapData(map, catalog);
  const devicePanel = new DevicePanel($("device-panel"), catalog);
  const alerts = new AlertsPanel(body("alerts-panel"), openDevice);
  const feed = new LiveFeed(body("feed-panel"), openDevice);
  const state = { overview: null, water: null, layer: $("layer").value };
  Object.assign(probe, { map, data, feed, alerts, devicePanel });

  function openDevice(id) {
    const index = data.store.index.get(id);
    map.select(index === undefined ? null : index);
    devicePanel.open(id);
  }
  devicePanel.onClose = () => map.select(null);
  map.onSelect = openDevice;
  map.onView = () => data.viewChanged().catch((e) => console.warn(e));

  // Kind filter from the catalog.
  const kindSelect = $("kind-filter");
  const fillKinds = () => {
    kindSelect.innerHTML = `<option value="">${t("all_kinds")}</option>` +
      catalog.kinds.map((k) => `<option value="${k.name}">${kindName(k.name)}</option>`).join("");
  };
  fillKinds();
  kindSelect.onchange = () => {
    const i = data.store.kinds.indexOf(kindSelect.value);
    map.setKindFilter(kindSelect.value && i >= 0 ? i : null);
    feed.setKind(kindSelect.value);
  };
  $("layer").onchange = (e) => {
    state.layer = e.target.value;
    map.setLayer(state.layer);
    renderLegend($("map-legend"), state.layer, catalog);
  };
  $("search").onsubmit = (e) => {
    e.preventDefault();
    const id = $("search-input").value.trim();
    if (id) openDevice(id);
  };
  $("lang-toggle").onclick = () => setLanguage(lang() === "zh" ? "en" : "zh");

  function renderAll() {
    renderLegend($("map-legend"), state.layer, catalog);
    const selectedKind = kindSelect.value;
    fillKinds();
    kindSelect.value = selectedKind;
    if (state.overview) {
      renderOverview(body("overview-panel"), state.overview);
      renderAqi(body("aqi-panel"), state.overview.districts);
      renderRain(body("rain-panel"), state.overview.districts, catalog);
    }
    if (state.water) renderWater(body("water-panel"), state.water, openDevice);
    alerts.render();
    feed.render();
    updateNote();
    map.request();
  }
  onLanguage(renderAll);

  function updateNote() {
    const mode = data.mode === "density" && map.bins ? t("density_mode") : `${t("drawn")}: ${map.drawn.toLocaleString()}`;
    $("map-note").textContent = `${mode} · ${t("district_regions")}`;
  }

  async function pollOverview() {
    const { body: overview, changed } = await getJSON("/city/overview");
    if (changed || !state.overview) applyOverview(overview);
  }

  function applyOverview(overview) {
    state.overview = overview;
    map.setSummaries(overview.districts);
    renderOverview(body("overview-panel"), overview);
    renderAqi(body("aqi-panel"), overview.districts);
    renderRain(body("rain-panel"), overview.districts, catalog);
  }

  async function pollWater() {
    const { body: water, changed } = await getJSON("/city/water-quality/stations");
    if (!changed && state.water) return;
    state.water = water;
    renderWater(body("water-panel"), water, openDevice);
  }

  async function loadAlerts() {
    const { body: page } = await getJSON("/alerts", { limit: ALERTS_SHOWN });
    alerts.load(page);
  }

  renderAll();
  applyOverview(overviewAnswer.body);
  await data.start(state.overview.devices.total, positionsAnswer && positionsAnswer.body, statesAnswer.body);
  // Drawn now rather than on the next frame: the moment the benchmark measures.
  map.draw();
  probe.drawnAt = performance.now();
  performance.mark("map-drawn");
  updateNote();

  probe.pollers = {
    overview: new Poller("overview", OVERVIEW_POLL_MS, pollOverview),
    states: new Poller("states", STATES_POLL_MS, async () => {
      if (await data.pollStates()) map.request();
      updateNote();
    }),
  };
  probe.pollers.overview.start();
  probe.pollers.states.start();
  new Poller("water", WATER_POLL_MS, pollWater).start();
  await loadAlerts().catch((e) => console.warn(e));

  const pill = $("live-status");
  const live = new LiveStream({
    onReading: (r) => {
      feed.add(r);
      const i = data.store.index.get(r.device_id);
      if (i === undefined) return;
      if (data.store.markOnline(r.device_id)) map.request();
      map.flash(i);
    },
    onAlert: (a) => alerts.live(a),
    onState: (s) => {
      pill.dataset.state = s;
      pill.textContent = t(`live_${s}`);
    },
    onReconnect: () => loadAlerts().catch((e) => console.warn(e)),
  });
  probe.live = live;
  live.open(kindSelect.value);
  kindSelect.addEventListener("change", () => live.follow(kindSelect.value));

  setInterval(() => {
    $("clock").textContent = new Date().toLocaleString(lang() === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  }, 1000);
  probe.ready = true;
}

main().catch((err) => {
  probe.errors.push(String(err && err.stack ? err.stack : err));
  console.error(err);
  $("map-note").textContent = `${err.message || err}`;
});
