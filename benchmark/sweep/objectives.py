"""What a sweep optimizes and what it requires: objectives and constraints on a trial's target point.

A trial's point is the artifact kdtool would ship for the target (the report card's pick: the fastest
verified artifact keeping `benchmark.min_retention`; when none keeps it, the fastest verified
artifact, its retention below the floor). Its numbers: `retention` (of the teacher's primary metric),
`p50_ms` (batch 1), `size_mb` (on disk) and `metric` (the primary metric itself).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from compress.core.errors import KdtoolError

DIRECTIONS = {"retention": "maximize", "p50_ms": "minimize", "size_mb": "minimize", "metric": "maximize"}
"""The numbers of a trial's point an objective or a constraint may name, with the better direction
(`metric` is flipped for error metrics such as MAE)."""

DEFAULT_OBJECTIVES = ("retention", "p50_ms")

_CONSTRAINT = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`name <= bound` or `name >= bound`; as Optuna wants it, a value <= 0 means feasible."""

    name: str
    op: str
    bound: float

    def violation(self, value: float | None) -> float:
        """Optuna's constraint value: <= 0 when met (a missing value violates it by 1)."""
        if value is None:
            return 1.0
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}"


def _known(name: str, flag: str) -> str:
    if name in DIRECTIONS:
        return name
    close = difflib.get_close_matches(name, DIRECTIONS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise KdtoolError(f"{flag} {name!r}: unknown metric", f"{hint}known: {', '.join(DIRECTIONS)}")


def parse_objectives(names: list[str] | None) -> tuple[str, ...]:
    """`--objective` values (default: retention and p50_ms); `size_mb` adds the size.

    Raises:
        KdtoolError: an unknown or repeated name.
    """
    chosen = tuple(_known(n.strip(), "--objective") for n in (names or DEFAULT_OBJECTIVES))
    if len(set(chosen)) != len(chosen):
        raise KdtoolError(f"--objective repeated: {', '.join(chosen)}", "name each objective once")
    return chosen


def parse_constraints(texts: list[str] | None) -> tuple[Constraint, ...]:
    """`--constraint 'p50_ms<=10'` values.

    Raises:
        KdtoolError: not `name<=number`/`name>=number`, or an unknown metric.
    """
    out = []
    for text in texts or []:
        m = _CONSTRAINT.match(text)
        if m is None:
            raise KdtoolError(f"--constraint {text!r} is not NAME<=NUMBER or NAME>=NUMBER",
                              "e.g. --constraint 'p50_ms<=10' --constraint 'retention>=0.97'")
        try:
            bound = float(m.group(3))
        except ValueError:
            raise KdtoolError(f"--constraint {text!r}: {m.group(3)!r} is not a number") from None
        out.append(Constraint(_known(m.group(1), "--constraint"), m.group(2), bound))
    return tuple(out)


def directions(objectives: tuple[str, ...], lower_is_better_metric: bool) -> list[str]:
    """Optuna's study directions for the objectives."""
    flip = {"maximize": "minimize", "minimize": "maximize"}
    return [flip[DIRECTIONS[o]] if o == "metric" and lower_is_better_metric else DIRECTIONS[o] for o in objectives]
