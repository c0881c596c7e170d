"""Response models of the city views (/city/...): AQI, surface water class, rain and warnings.

Times are aware datetimes in UTC and serialise as RFC 3339. Every response names its standard
and units; windows are right-closed: a reading stamped t covers the interval ending at t.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AqiStandardName = Literal["HJ633-2026", "HJ633-2012"]
AqiPeriod = Literal["hourly", "daily"]
WaterClassLabel = Literal["I", "II", "III", "IV", "V", "劣V"]
WarningLevel = Literal["none", "blue", "yellow", "orange", "red"]

_T0 = "2026-03-01T08:00:00Z"


# --- AQI ----------------------------------------------------------------------------------------


class SubIndexOut(BaseModel):
    indicator: str = Field(description="pollutant and averaging, e.g. pm25_24h, o3_8h, so2_1h")
    pollutant: str = Field(description="PM2.5, PM10, SO2, NO2, CO or O3")
    averaging: str = Field(description="how the concentration was formed from the hourly means")
    concentration: float | None = Field(description="null when the data fall short of the validity rule")
    unit: str
    samples: int = Field(
        description="what the concentration rests on: hourly means (for o3_8h daily: valid 8 h windows)"
    )
    samples_required: int = Field(
        description="the minimum for a valid concentration (GB 3095-2012 table 4, HJ 663-2013): 20 hourly"
        " means for a 24 h mean (moving or daily), 1 valid 8 h window (each needs 6 of its 8 hours),"
        " 1 for a 1 h value"
    )
    valid: bool = Field(description="samples reach samples_required; an invalid indicator gives no IAQI")
    iaqi: int | None = Field(description="individual air quality index, rounded up")
    iaqi_basis: str | None = Field(
        description="indicator whose table and concentration gave the IAQI (differs under HJ 633"
        " table 1 notes 2-3: so2_24h for so2_1h above 800, o3_1h for o3_8h above 800)"
    )
    primary: bool = Field(description="IAQI equals the AQI and the AQI is above 50")
    note: str | None


class AqiIndex(BaseModel):
    aqi: int | None = Field(description="max of the IAQIs; null without any valid concentration")
    level: int | None = Field(description="AQI level 1-6")
    category_zh: str | None = Field(description="优, 良, 轻度污染, 中度污染, 重度污染, 严重污染")
    category_en: str | None
    colour: str | None = Field(description="category colour (HJ 633-2012 appendix A), #RRGGBB")
    primary_pollutants: list[str] = Field(description="empty when the AQI is 50 or below")
    indicators: list[SubIndexOut]


class StationAqi(AqiIndex):
    device_id: str
    district: str


class DistrictAqi(AqiIndex):
    district: str
    name: str
    stations: int = Field(description="air stations registered in the district")
    stations_reporting: int = Field(description="stations with at least one reading in the window")


class AqiHeader(BaseModel):
    period: AqiPeriod
    standard: AqiStandardName
    standard_title: str
    at: datetime = Field(description="the time asked for")
    day: date | None = Field(description="daily: the calendar day (China Standard Time) evaluated")
    window_start: datetime = Field(description="readings with window_start < time <= window_end")
    window_end: datetime
    method: str


_AQI_ITEM: dict[str, Any] = {
    "aqi": 110,
    "level": 3,
    "category_zh": "轻度污染",
    "category_en": "Lightly polluted",
    "colour": "#FF7E00",
    "primary_pollutants": ["PM2.5"],
    "indicators": [
        {
            "indicator": "pm25_24h",
            "pollutant": "PM2.5",
            "averaging": "24 h moving mean",
            "concentration": 70.0,
            "unit": "ug/m3",
            "samples": 24,
            "samples_required": 20,
            "valid": True,
            "iaqi": 110,
            "iaqi_basis": "pm25_24h",
            "primary": True,
            "note": None,
        }
    ],
}
_AQI_HEADER: dict[str, Any] = {
    "period": "hourly",
    "standard": "HJ633-2026",
    "standard_title": "HJ 633-2026 Technical regulation on ambient air quality index",
    "at": _T0,
    "day": None,
    "window_start": "2026-02-28T08:00:00Z",
    "window_end": _T0,
    "method": "...",
}


class StationAqiResponse(AqiHeader):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_AQI_HEADER,
                    "items": [{**_AQI_ITEM, "device_id": "air-futian-00001", "district": "futian"}],
                }
            ]
        }
    )
    items: list[StationAqi]


class DistrictAqiResponse(AqiHeader):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_AQI_HEADER,
                    "items": [
                        {
                            **_AQI_ITEM,
                            "district": "futian",
                            "name": "福田区",
                            "stations": 3,
                            "stations_reporting": 3,
                        }
                    ],
                }
            ]
        }
    )
    items: list[DistrictAqi]


# --- water quality ------------------------------------------------------------------------------


class WaterParameterOut(BaseModel):
    parameter: str = Field(description="catalog metric, e.g. nh3n_mgl")
    label: str = Field(description="pH, DO, CODMn, NH3-N, TP or TN")
    value: float | None
    unit: str
    water_class: WaterClassLabel | None = Field(description="class this value meets; null if not classed")
    counts_towards_class: bool = Field(description="false for TN (reported, or a reference class only)")
    exceedance_over_iii: float | None = Field(
        description="(value - class III limit) / limit when above it; never for DO and pH"
    )
    note: str | None


class StationWaterQuality(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "wq-baoan-00001",
                    "district": "baoan",
                    "water_body": "river",
                    "analysis_time": _T0,
                    "water_class": "IV",
                    "class_number": 4,
                    "deciding_parameters": ["nh3n_mgl"],
                    "main_pollutants": ["nh3n_mgl"],
                    "parameters": [
                        {
                            "parameter": "nh3n_mgl",
                            "label": "NH3-N",
                            "value": 1.2,
                            "unit": "mg/L",
                            "water_class": "IV",
                            "counts_towards_class": True,
                            "exceedance_over_iii": 0.2,
                            "note": None,
                        }
                    ],
                }
            ]
        }
    )
    device_id: str
    district: str
    water_body: Literal["river", "lake"] = Field(
        description="from the registry meta 'water_body'; default river"
    )
    analysis_time: datetime | None = Field(description="the analysis used; null when none in the look-back")
    water_class: WaterClassLabel | None
    class_number: int | None = Field(description="1-5, 6 for 劣V")
    deciding_parameters: list[str] = Field(description="parameters at the station's class")
    main_pollutants: list[str] = Field(description="up to three parameters worse than class III")
    parameters: list[WaterParameterOut]


class WaterQualityResponse(BaseModel):
    standard: str
    at: datetime
    lookback_hours: int = Field(description="how far before `at` an analysis may lie")
    method: str
    items: list[StationWaterQuality]


# --- rain ---------------------------------------------------------------------------------------


class RainCategoryOut(BaseModel):
    key: str
    name_zh: str
    name_en: str


class DistrictRain(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "district": "longgang",
                    "name": "龙岗区",
                    "stations": 12,
                    "stations_reporting": 12,
                    "rain_1h_mm": 21.4,
                    "rain_3h_mm": 60.2,
                    "rain_6h_mm": 61.0,
                    "rain_12h_mm": 61.0,
                    "rain_24h_mm": 61.0,
                    "last_hour_category": {"key": "rainstorm", "name_zh": "暴雨", "name_en": "rainstorm"},
                    "rain_24h_category": {"key": "rainstorm", "name_zh": "暴雨", "name_en": "rainstorm"},
                    "warning": "orange",
                    "warning_zh": "暴雨橙色预警信号",
                }
            ]
        }
    )
    district: str
    name: str
    stations: int = Field(description="hydrology stations registered in the district")
    stations_reporting: int = Field(description="stations with a rain reading in the last 24 h")
    rain_1h_mm: float | None = Field(description="max over the stations; null without readings")
    rain_3h_mm: float | None
    rain_6h_mm: float | None
    rain_12h_mm: float | None
    rain_24h_mm: float | None
    last_hour_category: RainCategoryOut | None
    rain_24h_category: RainCategoryOut | None
    warning: WarningLevel | None = Field(description="highest rainstorm signal reached; null without data")
    warning_zh: str | None


class RainResponse(BaseModel):
    at: datetime
    unit: Literal["mm"] = "mm"
    standard: str
    method: str
    items: list[DistrictRain]


# --- district summary and city overview ---------------------------------------------------------


class DeviceStateCounts(BaseModel):
    total: int
    online: int
    offline: int = Field(description="the device said so (status message or last will)")
    silent: int = Field(description="claims to be up but quiet for silent_after_intervals x its interval")
    unknown: int = Field(description="registered, nothing received yet")


class KindDeviceCounts(DeviceStateCounts):
    kind: str
    title: str


class KeyMetricOut(BaseModel):
    kind: str
    metric: str
    description: str
    unit: str = Field(description="catalog unit")
    mean: float | None = Field(description="mean of the devices' latest values; null when none reported")
    min: float | None
    max: float | None
    devices: int = Field(description="devices whose latest value counted")


class AqiBrief(BaseModel):
    standard: AqiStandardName
    aqi: int | None
    level: int | None
    category_zh: str | None
    category_en: str | None
    colour: str | None
    primary_pollutants: list[str]
    stations: int
    stations_reporting: int


class RainBrief(BaseModel):
    unit: Literal["mm"] = "mm"
    rain_1h_mm: float | None = Field(description="max over the district's hydrology stations")
    rain_24h_mm: float | None
    last_hour_category: RainCategoryOut | None
    warning: WarningLevel | None
    warning_zh: str | None


class AlertCounts(BaseModel):
    active: int = Field(description="open alerts")
    by_severity: dict[str, int]


class DistrictSummary(BaseModel):
    district: str
    name: str
    population: int = Field(description="2020 census")
    devices: DeviceStateCounts
    devices_by_kind: list[KindDeviceCounts] = Field(description="every catalog kind, in catalog order")
    key_metrics: list[KeyMetricOut]
    aqi: AqiBrief = Field(description="real-time (hourly) AQI, as /city/aqi/districts")
    rain: RainBrief = Field(description="as /city/rain/districts")
    alerts: AlertCounts


_COUNTS: dict[str, Any] = {"total": 120, "online": 110, "offline": 3, "silent": 5, "unknown": 2}
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "district": "futian",
    "name": "福田区",
    "population": 1553000,
    "devices": _COUNTS,
    "devices_by_kind": [
        {**_COUNTS, "kind": "smart_pole", "title": "Multi-function smart pole (多功能智能杆)"}
    ],
    "key_metrics": [
        {
            "kind": "air_station",
            "metric": "pm25",
            "description": "PM2.5 mass concentration",
            "unit": "ug/m3",
            "mean": 18.2,
            "min": 12.0,
            "max": 25.1,
            "devices": 3,
        }
    ],
    "aqi": {
        "standard": "HJ633-2026",
        "aqi": 42,
        "level": 1,
        "category_zh": "优",
        "category_en": "Excellent",
        "colour": "#00E400",
        "primary_pollutants": [],
        "stations": 3,
        "stations_reporting": 3,
    },
    "rain": {
        "unit": "mm",
        "rain_1h_mm": 0.0,
        "rain_24h_mm": 3.5,
        "last_hour_category": {"key": "none", "name_zh": "无降水", "name_en": "no rain"},
        "warning": "none",
        "warning_zh": None,
    },
    "alerts": {"active": 2, "by_severity": {"warning": 2}},
}


class DistrictSummaryResponse(DistrictSummary):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"at": _T0, "method": "...", **_SUMMARY_EXAMPLE}]}
    )
    at: datetime = Field(description="when the summary was computed")
    method: str


class CityOverviewResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "at": _T0,
                    "method": "...",
                    "population": 17491000,
                    "devices": _COUNTS,
                    "devices_by_kind": _SUMMARY_EXAMPLE["devices_by_kind"],
                    "key_metrics": _SUMMARY_EXAMPLE["key_metrics"],
                    "alerts": _SUMMARY_EXAMPLE["alerts"],
                    "districts": [_SUMMARY_EXAMPLE],
                }
            ]
        }
    )
    at: datetime
    method: str
    population: int
    devices: DeviceStateCounts
    devices_by_kind: list[KindDeviceCounts]
    key_metrics: list[KeyMetricOut] = Field(description="over all the city's devices (not a mean of means)")
    alerts: AlertCounts
    districts: list[DistrictSummary] = Field(description="every district, in catalog order")
