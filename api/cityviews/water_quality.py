"""Surface water class of a monitoring station under GB 3838-2002 (DOMAIN.md section 5).

Each measured parameter gets the best class whose limit it meets (GB 3838-2002 table 1: DO is a
minimum, the others maxima, pH 6-9 in every class); worse than class V is 劣V. The station's
class is the worst over its parameters, and the deciding parameters are those at that class.

What counts, following the assessment method for surface water (环办〔2011〕22号, 地表水环境质量
评价办法(试行)), which evaluates table 1 without water temperature, total nitrogen and faecal
coliforms:

- TP uses the river column unless the station sits on a lake or reservoir;
- TN has limits for lakes and reservoirs only. On a river (all our stations unless their
  registry says otherwise) it is reported without a class; on a lake or reservoir it gets its
  class as a reference that does not change the station class (the method assesses it apart).

Main pollutants (主要污染指标, same method): when the station is worse than class III, up to
three parameters worse than class III, worst class first, then by exceedance multiple over the
class III limit ((C - limit) / limit; none for DO and pH, which rank after those with one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from fractions import Fraction

from api.cityviews._numbers import exact


class WaterBody(StrEnum):
    RIVER = "river"
    LAKE = "lake"  # lakes and reservoirs share GB 3838-2002's "湖、库" limits


_LAKE_NAMES = frozenset({"lake", "reservoir"})


def water_body_of(registry_value: str | None) -> WaterBody:
    """The water body of a station from its registry meta ``water_body``; rivers by default."""
    if registry_value is not None and registry_value.strip().lower() in _LAKE_NAMES:
        return WaterBody.LAKE
    return WaterBody.RIVER


class WaterClass(IntEnum):
    # Roman numerals: GB 3838-2002's own names for the classes.
    I = 1  # noqa: E741
    II = 2
    III = 3
    IV = 4
    V = 5
    WORSE_THAN_V = 6

    @property
    def label(self) -> str:
        return "劣V" if self is WaterClass.WORSE_THAN_V else self.name


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    label: str
    unit: str
    # Limits of classes I..V; DO is a minimum (higher is better), the others maxima.
    limits: tuple[str, ...]
    minimum: bool = False


# GB 3838-2002 table 1, mg/L; strings keep the limits exact.
DO = Parameter("do_mgl", "DO", "mg/L", ("7.5", "6", "5", "3", "2"), minimum=True)
CODMN = Parameter("codmn_mgl", "CODMn", "mg/L", ("2", "4", "6", "10", "15"))
NH3N = Parameter("nh3n_mgl", "NH3-N", "mg/L", ("0.15", "0.5", "1.0", "1.5", "2.0"))
TP_RIVER = Parameter("tp_mgl", "TP", "mg/L", ("0.02", "0.1", "0.2", "0.3", "0.4"))
TP_LAKE = Parameter("tp_mgl", "TP", "mg/L", ("0.01", "0.025", "0.05", "0.1", "0.2"))
TN_LAKE = Parameter("tn_mgl", "TN", "mg/L", ("0.2", "0.5", "1.0", "1.5", "2.0"))
PH_NAME = "ph"
PH_RANGE = (Fraction(6), Fraction(9))

PARAMETER_ORDER: tuple[str, ...] = (PH_NAME, "do_mgl", "codmn_mgl", "nh3n_mgl", "tp_mgl", "tn_mgl")
MAX_MAIN_POLLUTANTS = 3


@dataclass(frozen=True, slots=True)
class ParameterResult:
    parameter: str
    label: str
    value: float | None
    unit: str
    water_class: WaterClass | None
    counts: bool
    exceedance_over_iii: float | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class WaterQualityResult:
    water_class: WaterClass | None
    deciding: tuple[str, ...]
    main_pollutants: tuple[str, ...]
    parameters: tuple[ParameterResult, ...]


def parameter_class(parameter: Parameter, value: float) -> WaterClass:
    """The best class whose limit ``value`` meets; 劣V when it meets none."""
    v = exact(value, name=parameter.name)
    for cls, limit in zip(WaterClass, parameter.limits, strict=False):
        if (v >= Fraction(limit)) if parameter.minimum else (v <= Fraction(limit)):
            return cls
    return WaterClass.WORSE_THAN_V


def ph_class(value: float) -> WaterClass:
    """pH 6-9 meets every class (GB 3838-2002 table 1); outside it is 劣V."""
    v = exact(value, name=PH_NAME)
    return WaterClass.I if PH_RANGE[0] <= v <= PH_RANGE[1] else WaterClass.WORSE_THAN_V


def _exceedance(parameter: Parameter, value: float) -> float | None:
    if parameter.minimum:
        return None
    limit = Fraction(parameter.limits[WaterClass.III - 1])
    over = (exact(value) - limit) / limit
    return round(float(over), 3) if over > 0 else None


def _result(
    parameter: Parameter, value: float | None, *, counts: bool, note: str | None = None
) -> ParameterResult:
    if value is None:
        return ParameterResult(
            parameter.name, parameter.label, None, parameter.unit, None, counts, None, "not measured"
        )
    return ParameterResult(
        parameter.name,
        parameter.label,
        value,
        parameter.unit,
        parameter_class(parameter, value),
        counts,
        _exceedance(parameter, value),
        note,
    )


def _ph(value: float | None) -> ParameterResult:
    if value is None:
        return ParameterResult(PH_NAME, "pH", None, "pH", None, True, None, "not measured")
    return ParameterResult(PH_NAME, "pH", value, "pH", ph_class(value), True, None, None)


def _tn(value: float | None, water_body: WaterBody) -> ParameterResult:
    if water_body is WaterBody.LAKE:
        return _result(
            TN_LAKE,
            value,
            counts=False,
            note="reference class for lakes and reservoirs; not in the station class",
        )
    return ParameterResult(
        "tn_mgl",
        "TN",
        value,
        "mg/L",
        None,
        False,
        None,
        "GB 3838-2002 sets TN limits for lakes and reservoirs only: no class on a river",
    )


def _main_pollutants(results: tuple[ParameterResult, ...]) -> tuple[str, ...]:
    over = [r for r in results if r.counts and r.water_class is not None and r.water_class > WaterClass.III]
    # Worst class first; within a class the larger exceedance multiple; DO and pH (no multiple) last.
    over.sort(
        key=lambda r: (
            -int(r.water_class or 0),
            r.exceedance_over_iii is None,
            -(r.exceedance_over_iii or 0.0),
        )
    )
    return tuple(r.parameter for r in over[:MAX_MAIN_POLLUTANTS])


def classify(
    values: Mapping[str, float | None], water_body: WaterBody = WaterBody.RIVER
) -> WaterQualityResult:
    """Class, deciding parameters, main pollutants and per-parameter classes of one analysis."""
    tp = TP_LAKE if water_body is WaterBody.LAKE else TP_RIVER
    results = (
        _ph(values.get(PH_NAME)),
        _result(DO, values.get(DO.name), counts=True),
        _result(CODMN, values.get(CODMN.name), counts=True),
        _result(NH3N, values.get(NH3N.name), counts=True),
        _result(tp, values.get(tp.name), counts=True),
        _tn(values.get("tn_mgl"), water_body),
    )
    counted = [r for r in results if r.counts and r.water_class is not None]
    if not counted:
        return WaterQualityResult(None, (), (), results)
    worst = max(r.water_class for r in counted if r.water_class is not None)
    deciding = tuple(r.parameter for r in counted if r.water_class == worst)
    main = _main_pollutants(results) if worst > WaterClass.III else ()
    return WaterQualityResult(worst, deciding, main, results)
