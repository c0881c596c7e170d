// Chinese and English labels. The language comes from ?lang=, then the user's last choice, then
// the browser's language; the toggle switches and every panel re-renders through onLanguage().

const STRINGS = {
  zh: {
    title: "城市神经元 · 一图全面感知",
    subtitle: "深圳 · 城市运行监测",
    layer: "图层",
    layer_aqi: "空气质量 AQI",
    layer_rain: "暴雨预警",
    layer_offline: "设备离线率",
    layer_none: "无",
    kind_filter: "设备类型",
    all_kinds: "全部",
    search_placeholder: "设备编号，如 pole-futian-00001",
    overview: "城市总览",
    devices: "设备",
    online: "在线",
    offline: "离线",
    silent: "静默",
    unknown: "未上报",
    total: "总数",
    kind: "类型",
    key_metrics: "关键指标",
    metric: "指标",
    mean: "均值",
    alerts_active: "活动告警",
    aqi_title: "各区空气质量（实时 AQI）",
    district: "区",
    aqi: "AQI",
    category: "类别",
    primary: "首要污染物",
    stations: "站点",
    water_title: "地表水水质（GB 3838-2002）",
    station: "站点",
    water_class: "类别",
    deciding: "定类项目",
    analysed: "分析时间",
    rain_title: "降雨与暴雨预警",
    rain_1h: "1小时",
    rain_24h: "24小时",
    warning: "预警",
    no_warning: "无",
    alerts_title: "告警（最新在前）",
    no_alerts: "暂无告警",
    feed_title: "实时数据",
    feed_waiting: "等待实时数据…",
    live_open: "实时已连接",
    live_connecting: "正在连接…",
    live_closed: "实时已断开",
    legend_status: "设备状态",
    legend_aqi: "AQI 类别（HJ 633）",
    legend_rain: "暴雨预警信号",
    legend_offline: "离线+静默占比",
    no_data: "无数据",
    device: "设备",
    latest: "最新数据",
    value: "数值",
    time: "时间",
    status: "状态",
    quality: "数据质量",
    messages: "消息数",
    seq_gaps: "序号缺失",
    seq_duplicates: "重复",
    seq_reordered: "乱序",
    last_seen: "最后上报",
    chart: "曲线",
    commands: "远程控制",
    api_key: "API 密钥（仅保存在本标签页）",
    send: "发送",
    lamp_level: "路灯亮度 %",
    valve_open: "开阀",
    valve_close: "关阀",
    pending: "等待确认",
    acked: "已确认",
    failed: "失败",
    timed_out: "超时",
    error: "错误",
    not_found: "未找到设备",
    no_reading: "尚无数据",
    bucket: "粒度",
    points: "点",
    close: "关闭",
    drawn: "已绘制设备",
    density_mode: "密度网格（设备过多，放大查看单个设备）",
    district_regions: "区域为各区中心的泰森多边形，仅示意，非行政边界",
  },
  en: {
    title: "CityNeuron · City at a glance",
    subtitle: "Shenzhen · operations screen",
    layer: "Layer",
    layer_aqi: "Air quality (AQI)",
    layer_rain: "Rainstorm warning",
    layer_offline: "Devices offline",
    layer_none: "None",
    kind_filter: "Kind",
    all_kinds: "All",
    search_placeholder: "device id, e.g. pole-futian-00001",
    overview: "City overview",
    devices: "Devices",
    online: "online",
    offline: "offline",
    silent: "silent",
    unknown: "unknown",
    total: "total",
    kind: "Kind",
    key_metrics: "Key metrics",
    metric: "Metric",
    mean: "mean",
    alerts_active: "Active alerts",
    aqi_title: "District air quality (real-time AQI)",
    district: "District",
    aqi: "AQI",
    category: "Category",
    primary: "Primary",
    stations: "Stations",
    water_title: "Surface water (GB 3838-2002)",
    station: "Station",
    water_class: "Class",
    deciding: "Deciding",
    analysed: "Analysed",
    rain_title: "Rain and rainstorm warnings",
    rain_1h: "1 h",
    rain_24h: "24 h",
    warning: "Warning",
    no_warning: "none",
    alerts_title: "Alerts (newest first)",
    no_alerts: "No alerts",
    feed_title: "Live readings",
    feed_waiting: "Waiting for live readings…",
    live_open: "live",
    live_connecting: "connecting…",
    live_closed: "live: disconnected",
    legend_status: "Device state",
    legend_aqi: "AQI category (HJ 633)",
    legend_rain: "Rainstorm warning signal",
    legend_offline: "Share offline + silent",
    no_data: "no data",
    device: "Device",
    latest: "Latest values",
    value: "Value",
    time: "Time",
    status: "Status",
    quality: "Data quality",
    messages: "messages",
    seq_gaps: "gaps",
    seq_duplicates: "duplicates",
    seq_reordered: "reordered",
    last_seen: "last seen",
    chart: "Chart",
    commands: "Commands",
    api_key: "API key (kept for this tab only)",
    send: "Send",
    lamp_level: "Lamp level %",
    valve_open: "Open valve",
    valve_close: "Close valve",
    pending: "pending",
    acked: "acked",
    failed: "failed",
    timed_out: "timed out",
    error: "error",
    not_found: "no such device",
    no_reading: "no reading yet",
    bucket: "bucket",
    points: "points",
    close: "Close",
    drawn: "devices drawn",
    density_mode: "density grid (too many devices: zoom in for single devices)",
    district_regions: "Regions: Voronoi cells of the district centres, schematic, not legal boundaries",
  },
};

const STORAGE = "cityneuron.lang";
const listeners = [];
let catalog = null;
let current = pick();

function pick() {
  const asked = new URLSearchParams(window.location.search).get("lang");
  if (asked === "zh" || asked === "en") return asked;
  const saved = localStorage.getItem(STORAGE);
  if (saved === "zh" || saved === "en") return saved;
  return (navigator.language || "zh").toLowerCase().startsWith("zh") ? "zh" : "en";
}

export function lang() {
  return current;
}

export function t(key) {
  return STRINGS[current][key] ?? STRINGS.en[key] ?? key;
}

export function useCatalog(value) {
  catalog = value;
}

export function districtName(slug) {
  const d = catalog && catalog.districts.find((x) => x.slug === slug);
  if (!d) return slug;
  return current === "zh" ? d.name_zh : d.name_en;
}

// Kind labels come from the catalog (cityneuron/catalog.py, via /catalog), like district names.
export function kindName(name) {
  const k = catalog && catalog.kinds.find((x) => x.name === name);
  if (!k) return name;
  return (current === "zh" ? k.name_zh : k.name_en) || name;
}

export function setLanguage(value) {
  current = value;
  localStorage.setItem(STORAGE, value);
  apply();
  for (const fn of listeners) fn(value);
}

export function onLanguage(fn) {
  listeners.push(fn);
}

// Static labels: elements with data-i18n / data-i18n-placeholder.
export function apply() {
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  const toggle = document.getElementById("lang-toggle");
  if (toggle) toggle.textContent = current === "zh" ? "EN" : "中文";
  document.title = t("title");
}
