"""The exception hierarchy of pkmodel.

Every error a user can cause derives from :class:`PkmodelError` and carries a message that states
*where* (file, key, row or expression), *which rule* was broken, and *how to fix it*.  The command
line prints such errors as one line and exits non-zero; anything else is a bug in pkmodel.
"""

from __future__ import annotations

__all__ = [
    "DatasetError",
    "DosingError",
    "EstimationError",
    "ExpressionError",
    "ModelFileError",
    "PkmodelError",
    "SimulationError",
    "SpecError",
    "UnitError",
]


class PkmodelError(Exception):
    """Base class of every error that pkmodel raises on bad input."""


class ModelFileError(PkmodelError):
    """A model file is malformed or inconsistent.

    Parameters
    ----------
    message : str
        What is wrong and how to fix it.
    file : str, optional
        The model file (path or name).
    key : str, optional
        The dotted TOML key the problem is in, e.g. ``"flows[3].rate"``.
    """

    def __init__(self, message: str, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.message = message
        where = ", ".join(part for part in (file, f"key '{key}'" if key else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ExpressionError(PkmodelError):
    """An expression is outside the allowed grammar or refers to unknown names.

    Parameters
    ----------
    message : str
        The rule that was broken and the fix.
    expression : str
        The offending expression text.
    column : int, optional
        0-based column of the offending token, used to draw a caret.
    """

    def __init__(self, message: str, expression: str = "", column: int | None = None):
        self.expression = expression
        self.column = column
        self.rule = message
        text = message
        if expression:
            text += f"\n    {expression}"
            if column is not None:
                text += "\n    " + " " * column + "^"
        super().__init__(text)


class UnitError(PkmodelError):
    """A unit string cannot be parsed, or two quantities have incompatible units."""


class DosingError(PkmodelError):
    """A dose record or regimen is contradictory or incomplete."""


class SimulationError(PkmodelError):
    """A simulation request is inconsistent with the model (unknown names, bad times, solver failure)."""


class DatasetError(PkmodelError):
    """A NONMEM-style dataset breaks one or more rules.

    Parameters
    ----------
    problems : list of str
        One message per problem, each naming the row (1-based data row, header excluded) and the fix.
    file : str, optional
        The dataset file.
    """

    def __init__(self, problems: list[str] | str, file: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.file = file
        head = f"{file}: " if file else ""
        if len(self.problems) == 1:
            text = head + self.problems[0]
        else:
            text = head + f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class SpecError(PkmodelError):
    """A fit or scenario specification (``fits/*.toml``) is malformed."""


class EstimationError(PkmodelError):
    """An estimation cannot start (e.g. no observations) or failed irrecoverably."""


class GradingError(PkmodelError):
    """A blood count cannot be graded (CTCAE) or a count time course cannot be summarised."""


class NCAError(PkmodelError):
    """A concentration-time profile or an option of non-compartmental analysis is invalid."""


__all__ += ["GradingError", "NCAError"]
