"""Dose event records and regimens, with NONMEM semantics.

A dose is an immutable record: a :class:`Bolus` (the whole amount enters at once) or an
:class:`Infusion` (zero-order input over a duration, given either as a rate *or* a duration).  Both
carry the NONMEM fields ``ii`` (interdose interval, h), ``addl`` (number of additional doses) and
``ss`` (0: none, 1: reset to steady state then dose, 2: steady state added to the current state).

A :class:`Regimen` is an ordered, immutable sequence of such records; :meth:`Regimen.expand` writes
out every single administration (ADDL unrolled), which is what the simulation engines consume.

Doses are in ``mg``, ``mg/kg`` (multiplied by body weight at simulation time), or any mass or molar
unit; conversion into a compartment's amount unit (e.g. mg of ADC into nmol of the DAR-8 species
through the molar mass) is done by the model (see :meth:`pkmodel.Model.dose_amount`).

Examples
--------
>>> from pkmodel.dosing import q3w, d1_8_15_q4w, parse_regimen
>>> [e.time for e in q3w(16, cycles=3).expand()]
[0.0, 504.0, 1008.0]
>>> [e.time for e in d1_8_15_q4w(12, cycles=2).expand()]
[0.0, 168.0, 336.0, 672.0, 840.0, 1008.0]
>>> parse_regimen("16 mg/kg q3w x6 over 1h") == q3w(16, cycles=6, duration=1.0)
True
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from .errors import DosingError

__all__ = [
    "Bolus",
    "Infusion",
    "Regimen",
    "cycle_regimen",
    "d1_8_15_q4w",
    "parse_regimen",
    "q3w",
]

HOURS_PER_DAY = 24.0
_DOSE_UNITS = ("mg/kg", "mg", "g", "µg", "ug", "ng", "mol", "mmol", "µmol", "umol", "nmol", "pmol")


def _check_number(name: str, value: float, *, positive: bool = False, nonnegative: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DosingError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DosingError(f"{name} must be finite, got {value!r}")
    if positive and number <= 0:
        raise DosingError(f"{name} must be > 0, got {number:g}")
    if nonnegative and number < 0:
        raise DosingError(f"{name} must be >= 0, got {number:g}")
    return number


def _check_common(event: Bolus | Infusion) -> None:
    kind = type(event).__name__
    object.__setattr__(event, "time", _check_number(f"{kind} time (h)", event.time, nonnegative=True))
    object.__setattr__(event, "amount", _check_number(f"{kind} amount", event.amount, positive=True))
    object.__setattr__(event, "ii", _check_number(f"{kind} ii (h)", event.ii, nonnegative=True))
    if isinstance(event.addl, bool) or not isinstance(event.addl, int) or event.addl < 0:
        raise DosingError(f"{kind} addl must be a whole number >= 0, got {event.addl!r}")
    if event.ss not in (0, 1, 2):
        raise DosingError(f"{kind} ss must be 0, 1 or 2 (NONMEM SS), got {event.ss!r}")
    if event.addl > 0 and event.ii <= 0:
        raise DosingError(
            f"{kind} has addl={event.addl} but ii={event.ii:g}: additional doses need an interdose "
            "interval; set ii > 0 (h) or addl=0"
        )
    if event.ss and event.ii <= 0:
        raise DosingError(f"{kind} has ss={event.ss} but ii={event.ii:g}: steady state needs ii > 0 (h)")
    if event.unit not in _DOSE_UNITS:
        raise DosingError(
            f"{kind} unit {event.unit!r} is not a dose unit; use one of {', '.join(_DOSE_UNITS)}"
        )
    if event.compartment is not None and (not isinstance(event.compartment, str) or not event.compartment):
        raise DosingError(f"{kind} compartment must be a compartment name or None, got {event.compartment!r}")


class _DoseRecord:
    """What Bolus and Infusion share: ADDL unrolling and validated copies."""

    time: float
    ii: float
    addl: int

    def times(self) -> tuple[float, ...]:
        """Administration (start) times, h, of this record with ADDL unrolled."""
        return tuple(self.time + k * self.ii for k in range(self.addl + 1))

    def replace(self, **changes: object):
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[call-arg]


@dataclass(frozen=True)
class Bolus(_DoseRecord):
    """An instantaneous dose.

    Parameters
    ----------
    time : float
        Time of the (first) dose, h, >= 0.
    amount : float
        Dose, in ``unit``, > 0.
    compartment : str or None
        Name of the receiving compartment; None means the model's default dosing compartment.
    unit : str
        ``"mg"``, ``"mg/kg"`` (× body weight), or another mass or molar unit.
    ii : float
        Interdose interval, h (needed when ``addl > 0`` or ``ss > 0``).
    addl : int
        Number of additional doses, each ``ii`` after the previous one.
    ss : {0, 1, 2}
        NONMEM steady-state flag.

    Examples
    --------
    >>> Bolus(0, 100, ii=24, addl=2).times()
    (0.0, 24.0, 48.0)
    """

    time: float
    amount: float
    compartment: str | None = None
    unit: str = "mg"
    ii: float = 0.0
    addl: int = 0
    ss: int = 0

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass(frozen=True)
class Infusion(_DoseRecord):
    """A zero-order infusion, given by its ``rate`` *or* its ``duration`` (never both).

    Parameters
    ----------
    time : float
        Start of the (first) infusion, h, >= 0.
    amount : float
        Total amount infused, in ``unit``, > 0.
    compartment : str or None
        Receiving compartment; None means the model's default dosing compartment.
    unit : str
        Dose unit (``"mg"``, ``"mg/kg"``, ...). ``rate`` is in ``unit`` per hour.
    rate : float, optional
        Infusion rate, ``unit``/h.
    duration : float, optional
        Infusion duration, h.
    ii, addl, ss
        As for :class:`Bolus`.

    Examples
    --------
    >>> Infusion(0, 100, rate=50).duration_h
    2.0
    >>> Infusion(0, 100, rate=50, duration=2)
    Traceback (most recent call last):
    ...
    pkmodel.errors.DosingError: Infusion given both rate=50 and duration=2: give one of them (NONMEM RATE or DUR), not both
    """

    time: float
    amount: float
    compartment: str | None = None
    unit: str = "mg"
    rate: float | None = None
    duration: float | None = None
    ii: float = 0.0
    addl: int = 0
    ss: int = 0

    def __post_init__(self) -> None:
        _check_common(self)
        if self.rate is not None and self.duration is not None:
            raise DosingError(
                f"Infusion given both rate={self.rate:g} and duration={self.duration:g}: "
                "give one of them (NONMEM RATE or DUR), not both"
            )
        if self.rate is None and self.duration is None:
            raise DosingError(
                "Infusion needs a rate (unit/h) or a duration (h); for an instant dose use Bolus"
            )
        if self.rate is not None:
            object.__setattr__(self, "rate", _check_number("Infusion rate", self.rate, positive=True))
        if self.duration is not None:
            object.__setattr__(
                self, "duration", _check_number("Infusion duration (h)", self.duration, positive=True)
            )
        if self.ii > 0 and (self.addl > 0 or self.ss) and self.duration_h > self.ii:
            raise DosingError(
                f"Infusion lasts {self.duration_h:g} h but repeats every ii={self.ii:g} h: overlapping "
                "infusions of one record are not supported; shorten the infusion or lengthen ii"
            )

    @property
    def duration_h(self) -> float:
        """Duration of one infusion, h."""
        return self.duration if self.duration is not None else self.amount / self.rate  # type: ignore[operator]


Dose = Bolus | Infusion


@dataclass(frozen=True)
class Regimen(Sequence):
    """An ordered, immutable sequence of dose records.

    Records are kept sorted by time (stable for equal times).  :meth:`expand` unrolls ADDL into single
    administrations.

    Parameters
    ----------
    events : iterable of Bolus or Infusion
    name : str, optional
        A label used in tables and reports, e.g. ``"16 mg/kg Q3W"``.

    Examples
    --------
    >>> r = Regimen([Bolus(24, 50), Bolus(0, 100)])
    >>> [e.time for e in r]
    [0.0, 24.0]
    """

    events: tuple[Dose, ...] = ()
    name: str = field(default="", compare=False)

    def __init__(self, events: Iterable[Dose] = (), name: str = ""):
        items = tuple(events)
        for i, event in enumerate(items):
            if not isinstance(event, (Bolus, Infusion)):
                raise DosingError(f"Regimen item {i} is {type(event).__name__}, not a Bolus or Infusion")
        order = sorted(range(len(items)), key=lambda i: items[i].time)
        object.__setattr__(self, "events", tuple(items[i] for i in order))
        object.__setattr__(self, "name", name)

    def __getitem__(self, index):  # type: ignore[override]
        return self.events[index]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Dose]:
        return iter(self.events)

    def __add__(self, other: Regimen) -> Regimen:  # type: ignore[override]
        return Regimen(self.events + tuple(other), name=" + ".join(n for n in (self.name, other.name) if n))

    def shift(self, hours: float) -> Regimen:
        """The same regimen starting ``hours`` later."""
        return Regimen((e.replace(time=e.time + hours) for e in self.events), name=self.name)

    def expand(self) -> tuple[Dose, ...]:
        """Every single administration, time-sorted, with ``addl=0``.

        The steady-state flag stays on the first administration of a record (with its ``ii``), as in
        NONMEM; the additional doses are plain doses.
        """
        out: list[Dose] = []
        for event in self.events:
            for k, t in enumerate(event.times()):
                if k == 0:
                    out.append(event.replace(time=t, addl=0, ii=event.ii if event.ss else 0.0))
                else:
                    out.append(event.replace(time=t, addl=0, ii=0.0, ss=0))
        return tuple(sorted(out, key=lambda e: e.time))

    def dose_times(self) -> tuple[float, ...]:
        """Sorted administration times, h."""
        return tuple(e.time for e in self.expand())

    def end_time(self) -> float:
        """Time (h) of the last administration (end of the last infusion)."""
        ends = [e.time + (e.duration_h if isinstance(e, Infusion) else 0.0) for e in self.expand()]
        return max(ends, default=0.0)

    def to_frame(self):
        """The expanded regimen as a NONMEM-like table (TIME, AMT, UNIT, CMT, RATE, DUR, SS, II)."""
        import pandas as pd

        rows = []
        for e in self.expand():
            infusion = isinstance(e, Infusion)
            rows.append(
                {
                    "TIME": e.time,
                    "AMT": e.amount,
                    "UNIT": e.unit,
                    "CMT": e.compartment,
                    "RATE": e.amount / e.duration_h if infusion else 0.0,
                    "DUR": e.duration_h if infusion else 0.0,
                    "SS": e.ss,
                    "II": e.ii,
                }
            )
        return pd.DataFrame(rows, columns=["TIME", "AMT", "UNIT", "CMT", "RATE", "DUR", "SS", "II"])

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"Regimen({label}{len(self.events)} records)"


def _one(
    time: float,
    amount: float,
    *,
    unit: str,
    duration: float | None,
    compartment: str | None,
    ii: float,
    addl: int,
) -> Dose:
    if duration is None or duration == 0:
        return Bolus(time, amount, compartment, unit, ii=ii, addl=addl)
    return Infusion(time, amount, compartment, unit, duration=duration, ii=ii, addl=addl)


def cycle_regimen(
    dose: float,
    *,
    days: Sequence[int] = (1,),
    cycle_days: int = 21,
    cycles: int = 1,
    unit: str = "mg/kg",
    duration: float | None = None,
    compartment: str | None = None,
    start: float = 0.0,
    name: str = "",
) -> Regimen:
    """Doses on given days of repeating cycles (day 1 = cycle start).

    Parameters
    ----------
    dose : float
        Amount per administration, in ``unit``.
    days : sequence of int
        Dosing days within a cycle, 1-based, strictly increasing, each <= ``cycle_days``.
    cycle_days : int
        Cycle length, days.
    cycles : int
        Number of cycles, >= 1.
    unit : str
        Dose unit.
    duration : float, optional
        Infusion duration, h; None or 0 gives boluses.
    compartment : str, optional
        Receiving compartment (default: the model's dosing compartment).
    start : float
        Time of the first cycle's day 1, h.
    name : str, optional
        Label; default built from the arguments.

    Returns
    -------
    Regimen
        One record per dosing day, each repeated every cycle through ``ii``/``addl``.

    Examples
    --------
    >>> cycle_regimen(10, days=(1, 8), cycle_days=21, cycles=2).dose_times()
    (0.0, 168.0, 504.0, 672.0)
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise DosingError(f"cycles must be a whole number >= 1, got {cycles!r}")
    if isinstance(cycle_days, bool) or not isinstance(cycle_days, int) or cycle_days < 1:
        raise DosingError(f"cycle length must be a whole number of days >= 1, got {cycle_days!r}")
    day_list = list(days)
    if not day_list:
        raise DosingError("a cycle regimen needs at least one dosing day")
    for d in day_list:
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= cycle_days:
            raise DosingError(
                f"dosing day {d!r} must be a whole number from 1 to the cycle length {cycle_days}"
            )
    if any(b <= a for a, b in itertools.pairwise(day_list)):
        raise DosingError(f"dosing days {day_list} must be strictly increasing")
    period = cycle_days * HOURS_PER_DAY
    records = [
        _one(
            start + (d - 1) * HOURS_PER_DAY,
            dose,
            unit=unit,
            duration=duration,
            compartment=compartment,
            ii=period if cycles > 1 else 0.0,
            addl=cycles - 1,
        )
        for d in day_list
    ]
    if not name:
        schedule = (
            f"d{','.join(str(d) for d in day_list)} q{cycle_days}d" if day_list != [1] else f"q{cycle_days}d"
        )
        name = f"{dose:g} {unit} {schedule} x{cycles}"
    return Regimen(records, name=name)


def q3w(
    dose: float,
    *,
    cycles: int = 6,
    unit: str = "mg/kg",
    duration: float | None = 1.0,
    compartment: str | None = None,
) -> Regimen:
    """Once every 3 weeks: day 1 of 21-day cycles (``"Q3W"``).

    Parameters
    ----------
    dose : float
        Dose per administration (default unit mg/kg).
    cycles : int
        Number of cycles.
    unit : str
        Dose unit.
    duration : float or None
        Infusion duration, h (default 1 h); None gives boluses.
    compartment : str, optional
        Receiving compartment.

    Examples
    --------
    >>> q3w(16, cycles=2).dose_times()
    (0.0, 504.0)
    """
    return cycle_regimen(
        dose,
        days=(1,),
        cycle_days=21,
        cycles=cycles,
        unit=unit,
        duration=duration,
        compartment=compartment,
        name=f"{dose:g} {unit} Q3W x{cycles}",
    )


def d1_8_15_q4w(
    dose: float,
    *,
    cycles: int = 6,
    unit: str = "mg/kg",
    duration: float | None = 1.0,
    compartment: str | None = None,
) -> Regimen:
    """Days 1, 8 and 15 of 28-day cycles (``"D1,8,15 q4w"``).

    Parameters are as for :func:`q3w`.

    Examples
    --------
    >>> d1_8_15_q4w(12, cycles=1).dose_times()
    (0.0, 168.0, 336.0)
    """
    return cycle_regimen(
        dose,
        days=(1, 8, 15),
        cycle_days=28,
        cycles=cycles,
        unit=unit,
        duration=duration,
        compartment=compartment,
        name=f"{dose:g} {unit} D1,8,15 q4w x{cycles}",
    )


# ----------------------------------------------------------------------------------------- text form

_TIME_UNITS = {"h": 1.0, "hr": 1.0, "min": 1.0 / 60.0, "d": 24.0, "day": 24.0, "w": 168.0, "wk": 168.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_TOKEN_PATTERNS = [
    ("once", re.compile(r"once$")),
    ("every", re.compile(rf"q({_NUMBER})(h|hr|min|d|day|w|wk)$")),
    ("days", re.compile(r"d(\d+(?:,\d+)*)$")),
    ("count", re.compile(r"x(\d+)$")),
    ("ss", re.compile(r"ss$")),
]


def parse_regimen(text: str) -> Regimen:
    """Parse the short command-line form of a regimen (parsed, never evaluated).

    Grammar (case-insensitive, tokens separated by spaces)::

        AMOUNT UNIT [once | qN(h|d|w) | dA,B,... qN(d|w)] [xN] [over N(h|min)] [rate N]
                    [at N(h|d|w)] [into COMPARTMENT] [ss]

    ``xN`` counts cycles for day lists (``d1,8,15 q4w x6`` is 18 doses) and doses otherwise
    (``q24h x3`` is 3 doses).  ``over`` gives an infusion duration, ``rate`` an infusion rate in
    UNIT/h; without either the doses are boluses.

    Parameters
    ----------
    text : str
        E.g. ``"16 mg/kg q3w x6 over 1h"``, ``"12 mg/kg d1,8,15 q4w x6 over 1h"``, ``"100 mg q12h x10"``.

    Returns
    -------
    Regimen

    Raises
    ------
    DosingError
        Unknown or repeated tokens and contradictions (``once`` with ``x``, ``over`` with ``rate``,
        a day list without a cycle length), naming the token and the fix.

    Examples
    --------
    >>> parse_regimen("100 mg q24h x3").dose_times()
    (0.0, 24.0, 48.0)
    >>> parse_regimen("12 mg/kg d1,8,15 q4w x2 over 1h").dose_times()
    (0.0, 168.0, 336.0, 672.0, 840.0, 1008.0)
    """
    if not isinstance(text, str) or not text.strip():
        raise DosingError("empty regimen text; write e.g. '16 mg/kg q3w x6 over 1h'")
    original = text
    tokens = text.replace("µ", "u").split()
    low = [t.lower() for t in tokens]

    def fail(msg: str) -> DosingError:
        return DosingError(f"regimen {original!r}: {msg}")

    if len(low) < 2:
        raise fail("expected an amount and a unit first, e.g. '16 mg/kg'")
    try:
        amount = float(low[0])
    except ValueError:
        raise fail(f"the first token {tokens[0]!r} must be the dose amount (a number)") from None
    unit = low[1].replace("ug", "µg").replace("umol", "µmol")
    if unit not in _DOSE_UNITS:
        raise fail(f"unknown dose unit {tokens[1]!r}; use one of {', '.join(_DOSE_UNITS)}")

    seen: dict[str, object] = {}

    def put(key: str, value: object, token: str) -> None:
        if key in seen:
            raise fail(f"{token!r} repeats the {key} given earlier; give it once")
        seen[key] = value

    i = 2
    while i < len(low):
        tok = low[i]
        if tok in ("over", "rate", "at", "into"):
            if i + 1 >= len(low):
                raise fail(f"{tok!r} needs a value after it")
            val = tokens[i + 1]
            if tok == "over":
                put("duration", _parse_duration(val, fail), f"over {val}")
            elif tok == "rate":
                try:
                    put("rate", float(val), f"rate {val}")
                except ValueError:
                    raise fail(f"rate {val!r} must be a number ({unit}/h)") from None
            elif tok == "at":
                put("start", _parse_duration(val, fail), f"at {val}")
            else:
                put("compartment", val, f"into {val}")
            i += 2
            continue
        for kind, pattern in _TOKEN_PATTERNS:
            m = pattern.match(tok)
            if m:
                if kind == "once":
                    put("schedule", ("once",), tok)
                elif kind == "every":
                    hours = float(m.group(1)) * _TIME_UNITS[m.group(3)]
                    if "days" in seen:
                        put("cycle", hours, tok)
                    else:
                        put("schedule", ("every", hours), tok)
                elif kind == "days":
                    put("days", tuple(int(d) for d in m.group(1).split(",")), tok)
                elif kind == "count":
                    put("count", int(m.group(1)), tok)
                else:
                    put("ss", 1, tok)
                break
        else:
            raise fail(
                f"unknown token {tokens[i]!r}; expected once, qN(h|d|w), dA,B,.., xN, over N(h|min), "
                "rate N, at N(h|d|w), into NAME or ss"
            )
        i += 1

    if "duration" in seen and "rate" in seen:
        raise fail("give 'over' (duration) or 'rate', not both")
    count = seen.get("count")
    if count is not None and count < 1:  # type: ignore[operator]
        raise fail("xN needs N >= 1")
    start = float(seen.get("start", 0.0))  # type: ignore[arg-type]
    compartment = seen.get("compartment")  # type: ignore[assignment]
    duration = seen.get("duration")
    rate = seen.get("rate")
    ss = int(seen.get("ss", 0))  # type: ignore[call-overload]

    def make(time: float, ii: float, addl: int) -> Dose:
        if rate is not None:
            return Infusion(time, amount, compartment, unit, rate=rate, ii=ii, addl=addl, ss=ss)  # type: ignore[arg-type]
        if duration is not None:
            return Infusion(time, amount, compartment, unit, duration=duration, ii=ii, addl=addl, ss=ss)  # type: ignore[arg-type]
        return Bolus(time, amount, compartment, unit, ii=ii, addl=addl, ss=ss)  # type: ignore[arg-type]

    if "days" in seen:
        if "cycle" not in seen:
            raise fail("a day list needs a cycle length after it, e.g. 'd1,8,15 q4w'")
        cycle_h = float(seen["cycle"])  # type: ignore[arg-type]
        if cycle_h % HOURS_PER_DAY:
            raise fail("the cycle length after a day list must be whole days or weeks")
        cycle_days = int(cycle_h // HOURS_PER_DAY)
        if ss:
            raise fail("'ss' applies to a single repeating record; it cannot be used with a day list")
        reg = cycle_regimen(
            amount,
            days=seen["days"],
            cycle_days=cycle_days,
            cycles=count or 1,
            unit=unit,  # type: ignore[arg-type]
            duration=None,
            start=start,
            compartment=compartment,
        )  # type: ignore[arg-type]
        events = [make(e.time, e.ii, e.addl) for e in reg]
        return Regimen(events, name=original.strip())
    schedule = seen.get("schedule", ("once",))
    if schedule[0] == "once":  # type: ignore[index]
        if count not in (None, 1):
            raise fail("'once' contradicts a dose count xN; use 'qN(h|d|w) xN' for repeated doses")
        if ss:
            raise fail("'ss' needs a dosing interval, e.g. 'q12h ss'")
        return Regimen([make(start, 0.0, 0)], name=original.strip())
    interval = float(schedule[1])  # type: ignore[index]
    if interval <= 0:
        raise fail("the dosing interval must be > 0")
    if count is None and not ss:
        raise fail(
            f"repeated dosing every {interval:g} h needs a count (xN): pkmodel never assumes infinitely many doses"
        )
    n = count or 1
    return Regimen([make(start, interval, n - 1)], name=original.strip())


def _parse_duration(text: str, fail) -> float:
    m = re.fullmatch(rf"{_NUMBER}(h|hr|min|d|day|w|wk)", text.lower())
    if not m:
        raise fail(f"{text!r} is not a time; write e.g. 1h, 30min, 2d")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]
