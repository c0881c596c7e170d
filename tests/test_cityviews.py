"""City views as pure computation: AQI (HJ 633), water class (GB 3838-2002), rain and warnings.

Expected numbers are worked out by hand in the comments: IAQI = (I_hi - I_lo) / (BP_hi - BP_lo)
* (C - BP_lo) + I_lo, rounded up.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.cityviews import CityViewError
from api.cityviews.air_means import area_means, daily_concentrations, hourly_concentrations
from api.cityviews.aqi import (
    BREAKPOINTS,
    IAQI_STEPS,
    Indicator,
    Period,
    Standard,
    category,
    components,
    evaluate,
    iaqi,
)
from api.cityviews.rain import (
    Accumulations,
    RainWarning,
    area_accumulations,
    daily_category,
    hourly_category,
    warning_level,
)
from api.cityviews.water_quality import (
    CODMN,
    DO,
    NH3N,
    TN_LAKE,
    TP_LAKE,
    TP_RIVER,
    Parameter,
    WaterBody,
    WaterClass,
    classify,
    parameter_class,
    ph_class,
    water_body_of,
)

HJ2026, HJ2012 = Standard.HJ633_2026, Standard.HJ633_2012
_ALL_TABLES = [(std, ind) for std in Standard for ind in BREAKPOINTS[std]]
_TABLE_IDS = [f"{std.value}-{ind.value}" for std, ind in _ALL_TABLES]

# --- AQI: breakpoint tables ---------------------------------------------------------------------


def test_tables_match_domain_section_4() -> None:
    assert BREAKPOINTS[HJ2026][Indicator.PM25_24H] == (0, 35, 60, 115, 150, 250, 350, 500)
    assert BREAKPOINTS[HJ2026][Indicator.PM10_24H] == (0, 50, 120, 250, 350, 420, 500, 600)
    assert BREAKPOINTS[HJ2012][Indicator.PM25_24H] == (0, 35, 75, 115, 150, 250, 350, 500)
    assert BREAKPOINTS[HJ2012][Indicator.PM10_24H] == (0, 50, 150, 250, 350, 420, 500, 600)
    # Only the particle rows differ between the two standards.
    differing = {ind for ind in Indicator if BREAKPOINTS[HJ2026][ind] != BREAKPOINTS[HJ2012][ind]}
    assert differing == {Indicator.PM25_24H, Indicator.PM10_24H}
    assert BREAKPOINTS[HJ2026][Indicator.SO2_1H] == (0, 150, 500, 650, 800)
    assert BREAKPOINTS[HJ2026][Indicator.O3_8H] == (0, 100, 160, 215, 265, 800)
    assert BREAKPOINTS[HJ2026][Indicator.CO_1H] == (0, 5, 10, 35, 60, 90, 120, 150)


@pytest.mark.parametrize(("standard", "indicator"), _ALL_TABLES, ids=_TABLE_IDS)
def test_every_breakpoint_gives_its_iaqi(standard: Standard, indicator: Indicator) -> None:
    table = BREAKPOINTS[standard][indicator]
    for bp, step in zip(table, IAQI_STEPS, strict=False):
        assert iaqi(indicator, float(bp), standard) == step, bp
        # One resolution step (1e-6) above a breakpoint rounds up to the next integer ...
        if bp != table[-1]:
            assert iaqi(indicator, bp + 1e-6, standard) == step + 1, bp
        # ... and one step below stays on the breakpoint's IAQI.
        if bp != 0:
            assert iaqi(indicator, bp - 1e-6, standard) == step, bp


@pytest.mark.parametrize(("standard", "indicator"), _ALL_TABLES, ids=_TABLE_IDS)
def test_beyond_the_top_breakpoint(standard: Standard, indicator: Indicator) -> None:
    table = BREAKPOINTS[standard][indicator]
    above = table[-1] + 0.1
    if indicator in (Indicator.SO2_1H, Indicator.O3_8H):
        # The table stops at 800: HJ 633 reports another indicator (see evaluate()).
        assert iaqi(indicator, above, standard) is None
    else:
        assert iaqi(indicator, above, standard) == 500
        assert iaqi(indicator, table[-1] * 10, standard) == 500


@pytest.mark.parametrize(
    ("indicator", "concentration", "standard", "expected"),
    [
        # PM2.5 70: 2026 segment 60-115 -> 100 + 50/55 * 10 = 109.09 -> 110;
        # 2012 segment 35-75 -> 50 + 50/40 * 35 = 93.75 -> 94.
        (Indicator.PM25_24H, 70, HJ2026, 110),
        (Indicator.PM25_24H, 70, HJ2012, 94),
        # PM2.5 60 is the 2026 IAQI-100 breakpoint; 2012: 50 + 50/40 * 25 = 81.25 -> 82.
        (Indicator.PM25_24H, 60, HJ2026, 100),
        (Indicator.PM25_24H, 60, HJ2012, 82),
        # PM10 150: 2026 segment 120-250 -> 100 + 50/130 * 30 = 111.54 -> 112; 2012 breakpoint 100.
        (Indicator.PM10_24H, 150, HJ2026, 112),
        (Indicator.PM10_24H, 150, HJ2012, 100),
        # PM2.5 35.1 (2026 and 2012 alike): 50 + 50/25 * 0.1 = 50.2 -> 51 (2012: 50.125 -> 51).
        (Indicator.PM25_24H, 35.1, HJ2026, 51),
        (Indicator.PM25_24H, 35.1, HJ2012, 51),
        # SO2 24h 133.3: 50 + 50/100 * 83.3 = 91.65 -> 92.
        (Indicator.SO2_24H, 133.3, HJ2026, 92),
        # NO2 1h 150: 50 + 50/100 * 50 = 75 exactly (no rounding up of an integer).
        (Indicator.NO2_1H, 150, HJ2026, 75),
        # CO 1h 7.5 mg/m3: 50 + 50/5 * 2.5 = 75.
        (Indicator.CO_1H, 7.5, HJ2026, 75),
        # O3 1h 100: 50/160 * 100 = 31.25 -> 32.
        (Indicator.O3_1H, 100, HJ2026, 32),
        # O3 8h 200: 100 + 50/55 * 40 = 136.36 -> 137.
        (Indicator.O3_8H, 200, HJ2026, 137),
        # O3 1h 900: 300 + 100/200 * 100 = 350.
        (Indicator.O3_1H, 900, HJ2026, 350),
        # SO2 1h 10: 50/150 * 10 = 3.33 -> 4.
        (Indicator.SO2_1H, 10, HJ2026, 4),
        (Indicator.PM25_24H, 0, HJ2026, 0),
    ],
)
def test_worked_examples(
    indicator: Indicator, concentration: float, standard: Standard, expected: int
) -> None:
    assert iaqi(indicator, concentration, standard) == expected


def test_float_noise_does_not_cross_a_breakpoint() -> None:
    # An average of 60 that comes out as 59.99999999999999 or 60.00000000000001 is still 60.
    assert iaqi(Indicator.PM25_24H, 60.00000000000001) == 100
    assert iaqi(Indicator.PM25_24H, 59.99999999999999) == 100
    mean = sum([70.1, 69.9, 70.3, 69.7]) / 4
    assert iaqi(Indicator.PM25_24H, mean, HJ2012) == 94


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_invalid_concentrations_are_refused(bad: float) -> None:
    with pytest.raises(CityViewError):
        iaqi(Indicator.PM25_24H, bad)


@given(
    st.sampled_from(_ALL_TABLES),
    st.floats(min_value=0, max_value=4000, allow_nan=False),
    st.floats(min_value=0, max_value=4000, allow_nan=False),
)
def test_iaqi_is_monotonic_and_bounded(table: tuple[Standard, Indicator], a: float, b: float) -> None:
    standard, indicator = table
    low, high = sorted((a, b))
    i_low, i_high = iaqi(indicator, low, standard), iaqi(indicator, high, standard)
    if i_high is None:  # above a truncated table: nothing to compare
        return
    assert i_low is not None
    assert 0 <= i_low <= i_high <= 500


@given(st.sampled_from(_ALL_TABLES), st.data())
def test_iaqi_matches_the_formula(table: tuple[Standard, Indicator], data: st.DataObject) -> None:
    standard, indicator = table
    bps = BREAKPOINTS[standard][indicator]
    i = data.draw(st.integers(min_value=1, max_value=len(bps) - 1))
    c = data.draw(st.integers(min_value=bps[i - 1] * 10, max_value=bps[i] * 10)) / 10
    exact = (
        Fraction(IAQI_STEPS[i] - IAQI_STEPS[i - 1], bps[i] - bps[i - 1]) * (Fraction(str(c)) - bps[i - 1])
        + IAQI_STEPS[i - 1]
    )
    assert iaqi(indicator, c, standard) == math.ceil(exact)


@pytest.mark.parametrize(
    ("aqi", "level", "zh", "en", "colour"),
    [
        (0, 1, "优", "Excellent", "#00E400"),
        (50, 1, "优", "Excellent", "#00E400"),
        (51, 2, "良", "Good", "#FFFF00"),
        (100, 2, "良", "Good", "#FFFF00"),
        (101, 3, "轻度污染", "Lightly polluted", "#FF7E00"),
        (150, 3, "轻度污染", "Lightly polluted", "#FF7E00"),
        (151, 4, "中度污染", "Moderately polluted", "#FF0000"),
        (200, 4, "中度污染", "Moderately polluted", "#FF0000"),
        (201, 5, "重度污染", "Heavily polluted", "#99004C"),
        (300, 5, "重度污染", "Heavily polluted", "#99004C"),
        (301, 6, "严重污染", "Severely polluted", "#7E0023"),
        (500, 6, "严重污染", "Severely polluted", "#7E0023"),
    ],
)
def test_categories(aqi: int, level: int, zh: str, en: str, colour: str) -> None:
    cat = category(aqi)
    assert (cat.level, cat.name_zh, cat.name_en, cat.colour) == (level, zh, en, colour)


# --- AQI: evaluation ----------------------------------------------------------------------------


def test_hourly_aqi_primary_pollutant() -> None:
    result = evaluate(
        Period.HOURLY,
        {
            Indicator.PM25_24H: 70,  # 110 (2026)
            Indicator.PM10_24H: 40,  # 40
            Indicator.SO2_1H: 10,  # 4
            Indicator.NO2_1H: 30,  # 15
            Indicator.CO_1H: 0.5,  # 5
            Indicator.O3_1H: 100,  # 32
        },
    )
    assert result.aqi == 110
    assert result.primary_pollutants == ("PM2.5",)
    assert result.category is not None and result.category.level == 3
    assert [s.iaqi for s in result.sub_indices] == [110, 40, 4, 15, 5, 32]
    assert [s.indicator for s in result.sub_indices] == list(components(Period.HOURLY))


def test_primary_pollutants_only_above_50_and_ties_listed() -> None:
    at_50 = evaluate(Period.HOURLY, {Indicator.PM25_24H: 35, Indicator.O3_1H: 160})
    assert at_50.aqi == 50 and at_50.primary_pollutants == () and at_50.category is not None
    assert at_50.category.name_zh == "优"
    # NO2 150 -> 75 and CO 7.5 -> 75: both primary, in report order.
    tie = evaluate(Period.HOURLY, {Indicator.NO2_1H: 150, Indicator.CO_1H: 7.5, Indicator.PM25_24H: 10})
    assert tie.aqi == 75 and tie.primary_pollutants == ("NO2", "CO")
    assert tie.primary_indicators == (Indicator.NO2_1H, Indicator.CO_1H)


def test_standard_changes_only_particles() -> None:
    conc = {Indicator.PM25_24H: 70.0, Indicator.NO2_1H: 150.0}
    assert evaluate(Period.HOURLY, conc, HJ2026).aqi == 110
    new_2012 = evaluate(Period.HOURLY, conc, HJ2012)
    assert new_2012.aqi == 94 and new_2012.primary_pollutants == ("PM2.5",)


def test_so2_above_800_reports_the_24h_mean() -> None:
    # 24 h mean 133.3 -> 92 on the 24 h table (HJ 633-2012 table 1 note 2).
    result = evaluate(Period.HOURLY, {Indicator.SO2_1H: 900, Indicator.SO2_24H: 133.3})
    so2 = result.sub_indices[2]
    assert so2.indicator is Indicator.SO2_1H and so2.concentration == 900
    assert so2.iaqi == 92 and so2.basis is Indicator.SO2_24H and so2.note and "133.3" in so2.note
    assert result.aqi == 92 and result.primary_pollutants == ("SO2",)
    # Exactly 800 stays on the 1 h table (IAQI 200).
    assert evaluate(Period.HOURLY, {Indicator.SO2_1H: 800, Indicator.SO2_24H: 10}).aqi == 200
    # No 24 h mean: capped at 200, the top of the 1 h table.
    capped = evaluate(Period.HOURLY, {Indicator.SO2_1H: 2000})
    assert capped.aqi == 200 and capped.sub_indices[2].basis is Indicator.SO2_1H


def test_o3_8h_above_800_reports_the_1h_value() -> None:
    result = evaluate(Period.DAILY, {Indicator.O3_8H: 850, Indicator.O3_1H: 900})
    o3_8h = next(s for s in result.sub_indices if s.indicator is Indicator.O3_8H)
    assert o3_8h.iaqi == 350 and o3_8h.basis is Indicator.O3_1H
    assert result.aqi == 350 and result.primary_pollutants == ("O3",)
    assert result.primary_indicators == (Indicator.O3_8H, Indicator.O3_1H)
    lone = evaluate(Period.DAILY, {Indicator.O3_8H: 850})
    assert lone.aqi is None and lone.sub_indices[5].iaqi is None


def test_daily_uses_24h_tables_and_o3_8h() -> None:
    conc = {
        Indicator.PM25_24H: 30.0,  # 50/35 * 30 = 42.86 -> 43
        Indicator.SO2_24H: 100.0,  # 50 + 50/100 * 50 = 75
        Indicator.NO2_24H: 40.0,  # 50
        Indicator.CO_24H: 1.0,  # 25
        Indicator.O3_8H: 200.0,  # 137
        Indicator.O3_1H: 200.0,  # 100
    }
    result = evaluate(Period.DAILY, conc)
    assert [s.iaqi for s in result.sub_indices] == [43, None, 75, 50, 25, 137, 100]
    assert result.aqi == 137 and result.primary_pollutants == ("O3",)
    assert result.primary_indicators == (Indicator.O3_8H,)


def test_no_data_gives_no_aqi() -> None:
    result = evaluate(Period.HOURLY, {})
    assert result.aqi is None and result.category is None and result.primary_pollutants == ()
    assert all(s.iaqi is None for s in result.sub_indices)


# --- AQI: averaging -----------------------------------------------------------------------------


def _series(**metrics: list[float | None]) -> dict[str, list[float | None]]:
    return dict(metrics)


def test_hourly_concentrations() -> None:
    pm25: list[float | None] = [60.0, 80.0] * 12
    pm25[3] = None
    so2: list[float | None] = [900.0 if hour == 23 else 100.0 for hour in range(24)]
    found = hourly_concentrations(_series(pm25=pm25, so2=so2, o3=[None] * 24))
    # 23 values: twelve 60s and eleven 80s (index 3, an 80, is missing).
    assert found[Indicator.PM25_24H].value == pytest.approx((12 * 60 + 11 * 80) / 23)
    assert found[Indicator.PM25_24H].samples == 23
    assert found[Indicator.SO2_1H].value == 900 and found[Indicator.SO2_1H].samples == 1
    assert found[Indicator.SO2_24H].value == pytest.approx((23 * 100 + 900) / 24)
    assert found[Indicator.O3_1H].value is None and found[Indicator.O3_1H].samples == 0
    assert found[Indicator.PM10_24H].value is None  # metric absent


def test_hourly_moving_means_need_20_hours() -> None:
    nineteen: list[float | None] = [None] * 5 + [80.0] * 19
    twenty: list[float | None] = [None] * 4 + [80.0] * 20
    found = hourly_concentrations(_series(pm25=nineteen, pm10=twenty, no2=[None] * 23 + [30.0]))
    pm25 = found[Indicator.PM25_24H]
    assert (pm25.value, pm25.samples, pm25.required, pm25.valid) == (None, 19, 20, False)
    pm10 = found[Indicator.PM10_24H]
    assert (pm10.value, pm10.samples, pm10.required, pm10.valid) == (80.0, 20, 20, True)
    no2 = found[Indicator.NO2_1H]
    assert (no2.value, no2.samples, no2.required) == (30.0, 1, 1)
    # One hour of PM2.5 is not a 24 h mean.
    assert hourly_concentrations(_series(pm25=[None] * 23 + [300.0]))[Indicator.PM25_24H].value is None


def test_daily_validity_rules() -> None:
    twenty: list[float | None] = [50.0] * 20 + [None] * 4
    nineteen: list[float | None] = [50.0] * 19 + [None] * 5
    found = daily_concentrations(_series(pm25=twenty, pm10=nineteen))
    assert found[Indicator.PM25_24H].value == 50 and found[Indicator.PM25_24H].samples == 20
    assert found[Indicator.PM10_24H].value is None and found[Indicator.PM10_24H].samples == 19


def test_daily_o3_windows() -> None:
    # 100 everywhere, 200 in hours 13-20 (one whole 8 h window): max 8 h 200, max 1 h 200.
    o3: list[float | None] = [200.0 if 13 <= i <= 20 else 100.0 for i in range(24)]
    found = daily_concentrations(_series(o3=o3))
    assert found[Indicator.O3_8H].value == 200 and found[Indicator.O3_8H].samples == 17
    assert found[Indicator.O3_1H].value == 200
    # Windows need 6 of their 8 hours: with data only in hours 0-5 there is exactly one window.
    sparse: list[float | None] = [120.0] * 6 + [None] * 18
    found = daily_concentrations(_series(o3=sparse))
    assert found[Indicator.O3_8H].value == 120 and found[Indicator.O3_8H].samples == 1
    # Five hours: no valid window at all.
    assert daily_concentrations(_series(o3=[120.0] * 5 + [None] * 19))[Indicator.O3_8H].value is None


def test_series_must_have_24_hours() -> None:
    with pytest.raises(CityViewError):
        hourly_concentrations(_series(pm25=[1.0] * 23))


def test_area_means_per_hour() -> None:
    a: list[float | None] = [60.0] * 24
    b: list[float | None] = [80.0] * 12 + [None] * 12
    area = area_means([_series(pm25=a), _series(pm25=b), _series()])
    assert area["pm25"] == [70.0] * 12 + [60.0] * 12
    assert area["o3"] == [None] * 24


# --- water quality ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "value", "expected"),
    [
        (DO, 7.5, WaterClass.I),
        (DO, 7.49, WaterClass.II),
        (DO, 6, WaterClass.II),
        (DO, 5, WaterClass.III),
        (DO, 4.99, WaterClass.IV),
        (DO, 3, WaterClass.IV),
        (DO, 2, WaterClass.V),
        (DO, 1.99, WaterClass.WORSE_THAN_V),
        (CODMN, 2, WaterClass.I),
        (CODMN, 2.01, WaterClass.II),
        (CODMN, 15, WaterClass.V),
        (CODMN, 15.01, WaterClass.WORSE_THAN_V),
        (NH3N, 0.15, WaterClass.I),
        (NH3N, 0.5, WaterClass.II),
        (NH3N, 1.0, WaterClass.III),
        (NH3N, 1.5, WaterClass.IV),
        (NH3N, 2.0, WaterClass.V),
        (NH3N, 2.01, WaterClass.WORSE_THAN_V),
        (TP_RIVER, 0.02, WaterClass.I),
        (TP_RIVER, 0.1, WaterClass.II),
        (TP_RIVER, 0.2, WaterClass.III),
        (TP_RIVER, 0.3, WaterClass.IV),
        (TP_RIVER, 0.4, WaterClass.V),
        (TP_RIVER, 0.41, WaterClass.WORSE_THAN_V),
        (TP_LAKE, 0.01, WaterClass.I),
        (TP_LAKE, 0.025, WaterClass.II),
        (TP_LAKE, 0.05, WaterClass.III),
        (TP_LAKE, 0.1, WaterClass.IV),
        (TP_LAKE, 0.2, WaterClass.V),
        (TN_LAKE, 0.2, WaterClass.I),
        (TN_LAKE, 1.0, WaterClass.III),
        (TN_LAKE, 2.0, WaterClass.V),
        (TN_LAKE, 2.1, WaterClass.WORSE_THAN_V),
    ],
)
def test_parameter_class_boundaries(parameter: Parameter, value: float, expected: WaterClass) -> None:
    assert parameter_class(parameter, value) is expected


def test_ph_range() -> None:
    assert ph_class(6) is WaterClass.I and ph_class(9) is WaterClass.I
    assert ph_class(5.99) is WaterClass.WORSE_THAN_V and ph_class(9.01) is WaterClass.WORSE_THAN_V


def test_river_station_class_is_worst_with_deciding_parameters() -> None:
    result = classify(
        {"ph": 7.2, "do_mgl": 5.5, "codmn_mgl": 5, "nh3n_mgl": 1.2, "tp_mgl": 0.25, "tn_mgl": 3.0}
    )
    assert result.water_class is WaterClass.IV and result.water_class.label == "IV"
    assert result.deciding == ("nh3n_mgl", "tp_mgl")
    # TP 0.25 exceeds the class III 0.2 by 0.25x, NH3-N 1.2 exceeds 1.0 by 0.2x.
    assert result.main_pollutants == ("tp_mgl", "nh3n_mgl")
    tn = next(p for p in result.parameters if p.parameter == "tn_mgl")
    assert tn.value == 3.0 and tn.water_class is None and not tn.counts and tn.note


def test_lake_station_uses_lake_tp_and_tn_as_reference() -> None:
    values = {"ph": 7.0, "do_mgl": 8.0, "codmn_mgl": 1.5, "nh3n_mgl": 0.1, "tp_mgl": 0.04, "tn_mgl": 2.5}
    lake = classify(values, WaterBody.LAKE)
    assert lake.water_class is WaterClass.III and lake.deciding == ("tp_mgl",)
    tn = next(p for p in lake.parameters if p.parameter == "tn_mgl")
    assert tn.water_class is WaterClass.WORSE_THAN_V and not tn.counts
    assert lake.main_pollutants == ()  # class III is not above III; TN does not count
    # The same water on a river: TP 0.04 is class II.
    assert classify(values).water_class is WaterClass.II


def test_worse_than_v_and_main_pollutant_ranking() -> None:
    result = classify(
        {"ph": 5.5, "do_mgl": 1.0, "codmn_mgl": 20, "nh3n_mgl": 3.0, "tp_mgl": 0.35, "tn_mgl": None}
    )
    assert result.water_class is WaterClass.WORSE_THAN_V and result.water_class.label == "劣V"
    assert result.deciding == ("ph", "do_mgl", "codmn_mgl", "nh3n_mgl")
    # 劣V first, by exceedance: NH3-N (3-1)/1 = 2.0, CODMn (20-6)/6 = 2.33 -> CODMn, NH3-N; then
    # pH/DO (no multiple); TP (class IV) would only come after.
    assert result.main_pollutants == ("codmn_mgl", "nh3n_mgl", "ph")


def test_class_i_and_missing_parameters() -> None:
    clean = classify({"ph": 7, "do_mgl": 9, "codmn_mgl": 1, "nh3n_mgl": 0.1, "tp_mgl": 0.01})
    assert clean.water_class is WaterClass.I and clean.main_pollutants == ()
    assert len(clean.deciding) == 5
    partial = classify({"nh3n_mgl": 0.7})
    assert partial.water_class is WaterClass.III and partial.deciding == ("nh3n_mgl",)
    assert classify({}).water_class is None


def test_water_body_from_registry() -> None:
    assert water_body_of(None) is WaterBody.RIVER
    assert water_body_of("river") is WaterBody.RIVER
    assert water_body_of("Reservoir") is WaterBody.LAKE
    assert water_body_of("lake") is WaterBody.LAKE


# --- rain ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mm", "key"),
    [
        (0, "none"),
        (0.1, "light"),
        (2.5, "light"),
        (2.6, "moderate"),
        (8.0, "moderate"),
        (8.1, "heavy"),
        (15.9, "heavy"),
        (16.0, "rainstorm"),
        (116.8, "rainstorm"),
    ],
)
def test_hourly_rain_category(mm: float, key: str) -> None:
    assert hourly_category(mm).key == key


@pytest.mark.parametrize(
    ("mm", "key", "zh"),
    [
        (0, "none", "无降水"),
        (9.9, "light", "小雨"),
        (10, "moderate", "中雨"),
        (24.9, "moderate", "中雨"),
        (25, "heavy", "大雨"),
        (49.9, "heavy", "大雨"),
        (50, "rainstorm", "暴雨"),
        (99.9, "rainstorm", "暴雨"),
        (100, "heavy_rainstorm", "大暴雨"),
        (249.9, "heavy_rainstorm", "大暴雨"),
        (250, "extreme_rainstorm", "特大暴雨"),
    ],
)
def test_daily_rain_category(mm: float, key: str, zh: str) -> None:
    cat = daily_category(mm)
    assert (cat.key, cat.name_zh) == (key, zh)


@pytest.mark.parametrize(
    ("h3", "h6", "h12", "level"),
    [
        (None, None, None, RainWarning.NONE),
        (0, 0, 0, RainWarning.NONE),
        (10, 30, 49.9, RainWarning.NONE),
        (10, 30, 50, RainWarning.BLUE),
        (10, 50, 50, RainWarning.YELLOW),
        (49.9, 55, 60, RainWarning.YELLOW),
        (50, 50, 50, RainWarning.ORANGE),
        (60, 60, 60, RainWarning.ORANGE),
        (99.9, 120, 150, RainWarning.ORANGE),
        (100, 100, 100, RainWarning.RED),
        (110, 110, 110, RainWarning.RED),
        (246.8, 300, 300, RainWarning.RED),  # Shenzhen record, 7 Sept 2023
    ],
)
def test_warning_levels(h3: float | None, h6: float | None, h12: float | None, level: RainWarning) -> None:
    assert warning_level(h3, h6, h12) is level


def test_warning_names_and_float_sums() -> None:
    assert RainWarning.ORANGE.key == "orange" and RainWarning.ORANGE.name_zh == "暴雨橙色预警信号"
    # Gauge values summed in binary floats: 49.99999999999999 is 50.0 mm at gauge resolution.
    assert warning_level(sum([0.1] * 500), None, None) is RainWarning.ORANGE
    with pytest.raises(CityViewError):
        warning_level(-1.0, None, None)


def test_district_takes_the_maximum_per_window() -> None:
    a = Accumulations(h1=5.0, h3=40.0, h6=45.0, h12=45.0, h24=45.0)
    b = Accumulations(h1=1.0, h3=30.0, h6=52.0, h12=52.0, h24=80.0)
    none = Accumulations(None, None, None, None, None)
    area = area_accumulations([a, b, none])
    assert area == Accumulations(h1=5.0, h3=40.0, h6=52.0, h12=52.0, h24=80.0)
    # The mean (35) or the sum (70) of the 3 h figures would say otherwise: the max says yellow.
    assert area.warning() is RainWarning.YELLOW
    assert area_accumulations([]) == none


@given(
    st.lists(
        st.tuples(*[st.floats(min_value=0, max_value=300, allow_nan=False)] * 3),
        min_size=1,
        max_size=6,
    )
)
def test_district_warning_is_the_highest_station_warning(stations: list[tuple[float, float, float]]) -> None:
    accs = [
        Accumulations(h1=None, h3=h3, h6=h3 + h6, h12=h3 + h6 + h12, h24=None) for h3, h6, h12 in stations
    ]
    assert area_accumulations(accs).warning() is max(acc.warning() for acc in accs)
