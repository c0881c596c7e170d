// Every colour the screen uses and where it comes from (docs/screen.md lists them too).

// Device states: our own choice, picked to stay apart for the common colour-vision deficiencies
// (green-teal / amber / red / grey differ in lightness as well as hue).
export const STATUS_COLOURS = {
  online: "#35d39a",
  offline: "#ff5d5d",
  silent: "#f5a623",
  unknown: "#7d8797",
};
export const STATUS_ORDER = ["online", "offline", "silent", "unknown"];

// AQI categories: the colours come from the API (/catalog aqi_categories, /city/overview
// district aqi.colour), which takes them from HJ 633-2012 appendix A. Never repeated here.

// Rainstorm warning signals (暴雨预警信号) are named by colour in the national warning-signal
// rules (China Meteorological Administration Order No. 16, 2007); the sRGB values are ours.
export const RAIN_WARNING_COLOURS = {
  none: null,
  blue: "#1e6fff",
  yellow: "#ffd400",
  orange: "#ff8c00",
  red: "#e60000",
};

// Surface-water classes (GB 3838-2002 names the classes, not colours): the usual Chinese
// water-quality map convention, blue (I-II) through green, yellow, orange, red (劣V).
export const WATER_CLASS_COLOURS = {
  I: "#41b6e6",
  II: "#2f8fd8",
  III: "#37c16b",
  IV: "#f2d02b",
  V: "#ff8c00",
  "劣V": "#e60000",
};

// Share of a district's devices offline or silent: 0 % green to >= 20 % red in five steps.
export const OFFLINE_STEPS = [
  [0.02, "#2a9d8f"],
  [0.05, "#8ab17d"],
  [0.1, "#e9c46a"],
  [0.2, "#f4a261"],
  [Infinity, "#e63946"],
];

export function offlineColour(share) {
  for (const [limit, colour] of OFFLINE_STEPS) if (share < limit) return colour;
  return OFFLINE_STEPS[OFFLINE_STEPS.length - 1][1];
}
