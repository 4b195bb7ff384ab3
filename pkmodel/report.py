"""Self-contained HTML reports with their CSV tables, written atomically.

A report is a list of :class:`Section` objects holding text, :class:`Table` objects (pandas DataFrames)
and :class:`Figure` objects (matplotlib figures).  :func:`write_report` writes ``report.html`` with the
figures embedded as PNG, every table as ``tables/NAME.csv``, the figures as ``figures/NAME.png`` and a
``provenance.json``.  Numbers are formatted *once* (``Table.digits`` significant digits) and the same
strings go into the CSV and the HTML, so every number in the report traces to a CSV exactly.

The folder is written into a temporary sibling and renamed into place: an interrupted run leaves no
half-written report, and an existing report is replaced only with ``force=True``.

This module imports matplotlib lazily; numerical code never imports it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import PkmodelError

__all__ = ["Figure", "Section", "Table", "format_table", "write_report"]


@dataclass(frozen=True)
class Table:
    """A table of the report.

    Parameters
    ----------
    name : str
        File stem of its CSV (``tables/NAME.csv``); letters, digits, ``_`` and ``-``.
    title : str
        Heading shown above it.
    frame : DataFrame
    caption : str
        Text under the heading (units, what the interval means).
    digits : int
        Significant digits of floating-point numbers, in the CSV and the HTML alike.
    show : bool
        False writes the CSV and links it without rendering the rows (e.g. data behind a figure).
    """

    name: str
    title: str
    frame: pd.DataFrame
    caption: str = ""
    digits: int = 4
    show: bool = True


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure, embedded as PNG and saved as ``figures/NAME.png``."""

    name: str
    title: str
    figure: Any
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """A titled part of the report: paragraphs, then tables and figures in order."""

    title: str
    text: Sequence[str] = ()
    items: Sequence[Table | Figure] = field(default_factory=tuple)


def _format_value(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return str(float(value))
        return f"{float(value):.{digits}g}"
    return str(value)


def format_table(table: Table) -> pd.DataFrame:
    """The table with every cell formatted as the text written to both the CSV and the HTML."""
    return table.frame.apply(lambda col: col.map(lambda v: _format_value(v, table.digits))).astype(str)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
h1{border-bottom:2px solid #345;padding-bottom:.3em}h2{margin-top:2em;color:#234}h3{margin-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:right}th{background:#eef2f6}
td.text,th.text{text-align:left}.caption{color:#555;font-size:.9em;margin:.2em 0 .5em}
.banner{background:#fff4d6;border:1px solid #e0c060;padding:.6em 1em;margin:1em 0}
img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}
"""


def _html_table(table: Table, formatted: pd.DataFrame) -> str:
    numeric = {c: pd.api.types.is_numeric_dtype(table.frame[c]) for c in table.frame.columns}
    head = "".join(
        f'<th class="{"num" if numeric[c] else "text"}">{html.escape(str(c))}</th>' for c in formatted.columns
    )
    rows = []
    for _, row in formatted.iterrows():
        cells = "".join(
            f'<td class="{"num" if numeric[c] else "text"}">{html.escape(v)}</td>' for c, v in row.items()
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<table data-csv="tables/{html.escape(table.name)}.csv"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def write_report(
    out_dir: str | Path,
    title: str,
    sections: Sequence[Section],
    *,
    provenance: dict[str, Any] | None = None,
    banner: str = "",
    force: bool = False,
) -> Path:
    """Write an HTML report with its CSV tables and figures into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        The report folder; must not exist unless ``force`` is True.
    title : str
    sections : sequence of Section
    provenance : dict, optional
        Written to ``provenance.json`` and shown at the end (versions, hashes, seed, command line).
    banner : str
        A highlighted notice at the top (e.g. "simulated data").
    force : bool
        Replace an existing folder (the old one is removed only after the new one is complete).

    Returns
    -------
    Path
        The path of ``report.html``.

    Raises
    ------
    PkmodelError
        If ``out_dir`` exists and ``force`` is False, or two tables/figures share a name.
    """
    target = Path(out_dir)
    if target.exists() and not force:
        raise PkmodelError(
            f"{target} exists; pkmodel never overwrites results: choose another folder or use --force"
        )
    names = [item.name for s in sections for item in s.items]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PkmodelError(
            f"report items share the names {duplicated}; give each table and figure its own name"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (work / "tables").mkdir()
        (work / "figures").mkdir()
        parts = [f"<h1>{html.escape(title)}</h1>"]
        if banner:
            parts.append(f'<div class="banner">{html.escape(banner)}</div>')
        toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
        parts.append(f"<ol>{toc}</ol>")
        for i, section in enumerate(sections):
            parts.append(f'<h2 id="s{i}">{html.escape(section.title)}</h2>')
            parts.extend(f"<p>{html.escape(p)}</p>" for p in section.text)
            for item in section.items:
                if isinstance(item, Table):
                    formatted = format_table(item)
                    formatted.to_csv(work / "tables" / f"{item.name}.csv", index=False)
                    link = f'<a href="tables/{html.escape(item.name)}.csv">{html.escape(item.name)}.csv</a>'
                    parts.append(f"<h3>{html.escape(item.title)}</h3>")
                    if item.caption:
                        parts.append(f'<p class="caption">{html.escape(item.caption)} (CSV: {link})</p>')
                    else:
                        parts.append(f'<p class="caption">CSV: {link}</p>')
                    if item.show:
                        parts.append(_html_table(item, formatted))
                else:
                    data = _png(item.figure)
                    (work / "figures" / f"{item.name}.png").write_bytes(data)
                    encoded = base64.b64encode(data).decode("ascii")
                    parts.append(f"<h3>{html.escape(item.title)}</h3>")
                    parts.append(
                        f'<img alt="{html.escape(item.title)}" src="data:image/png;base64,{encoded}">'
                    )
                    if item.caption:
                        parts.append(f'<p class="caption">{html.escape(item.caption)}</p>')
        if provenance:
            (work / "provenance.json").write_text(
                json.dumps(provenance, indent=2, default=str), encoding="utf-8"
            )
            rows = "".join(
                f'<tr><td class="text">{html.escape(str(k))}</td><td class="text">{html.escape(str(v))}</td></tr>'
                for k, v in provenance.items()
            )
            parts.append(f"<h2>Provenance</h2><table><tbody>{rows}</tbody></table>")
        document = (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
        )
        (work / "report.html").write_text(document, encoding="utf-8")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            try:
                os.replace(work, target)
            except BaseException:
                os.replace(old, target)  # put the previous report back before reporting the failure
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target / "report.html"
