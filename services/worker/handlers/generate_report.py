"""``generateReport``: a table from the payload as PDF (reportlab), XLSX (openpyxl) or CSV.

The file is written to a temporary file in a pool child process (so the job's timeout
really stops it) and streamed into the artifact store a chunk at a time, so a large
report is not held in memory twice.

Every string is the caller's and prints as written: the title goes through reportlab's
Paragraph markup parser, so it is XML-escaped (unescaped, ``<img src="/local/file">``
would embed a server file); cells and column names are drawn as plain strings, which
reportlab never parses. No string ever becomes a formula: XLSX text cells are written
as strings (openpyxl would otherwise store ``=...`` as a live formula), and CSV cells that
a spreadsheet would read as one (starting ``=``, ``+``, ``-``, ``@``, tab or CR) get a
leading single quote (OWASP's advice on CSV injection). XLSX cannot hold most control
characters, so an XLSX report holding one is refused at submit, naming the field.

What a payload may ask for is bounded per format (:data:`LIMITS`), so that a report
passing them finishes well within the type's timeout: reportlab's table layout costs
grow faster than linearly with rows (measured: 10,000 one-column rows 16 s, 20,000 54 s),
so PDF has the lowest caps; at the PDF caps the worst case measured 11 s (5,000 rows x
10 columns of 20-byte cells, on a busy 2-core machine).
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from dataclasses import dataclass
from typing import IO, Any, Literal
from xml.sax.saxutils import escape

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import LongTable, Paragraph, SimpleDocTemplate, Spacer, TableStyle

from services.worker.handlers.common import Payload, described
from shared.jobtypes import JobContext, job_type

Cell = str | int | float | bool | None
CONTENT_TYPES = {
    "pdf": "application/pdf",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv": "text/csv; charset=utf-8",
}
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a CSV cell as a formula."""


@dataclass(frozen=True)
class Limits:
    """The most one report of a format may ask for."""

    rows: int
    cells: int
    """rows x columns"""
    text_bytes: int
    """UTF-8 bytes of every cell and column name together"""
    cell_chars: int


LIMITS = {
    "pdf": Limits(rows=5_000, cells=50_000, text_bytes=1024 * 1024, cell_chars=2_000),
    "xlsx": Limits(rows=100_000, cells=250_000, text_bytes=8 * 1024 * 1024,
                   cell_chars=32_767),  # Excel's own cell limit
    "csv": Limits(rows=100_000, cells=1_000_000, text_bytes=16 * 1024 * 1024,
                  cell_chars=32_767),
}


class GenerateReport(Payload):
    format: Literal["pdf", "xlsx", "csv"]
    title: str = Field(min_length=1, max_length=200)
    columns: list[str] = Field(min_length=1, max_length=100)
    rows: list[list[Cell]] = Field(default_factory=list, max_length=100_000)

    @field_validator("rows")
    @classmethod
    def _rows_match_columns(cls, rows: list[list[Cell]],
                            info: ValidationInfo) -> list[list[Cell]]:
        columns = info.data.get("columns") or []
        width = len(columns)
        for i, row in enumerate(rows):
            if width and len(row) != width:
                raise ValueError(f"row {i} has {len(row)} cells; there are {width} columns")
        if "format" in info.data:
            _check_limits(info.data["format"], columns, rows)
        return rows

    @model_validator(mode="after")
    def _xlsx_can_hold_the_text(self) -> GenerateReport:
        """openpyxl refuses control characters (XML 1.0 cannot hold them): refused here,
        at submit, rather than failing in the worker after the job was accepted."""
        if self.format != "xlsx":
            return self
        fields = [("title", self.title),
                  *((f"columns[{i}]", c) for i, c in enumerate(self.columns)),
                  *((f"rows[{i}][{j}]", c) for i, row in enumerate(self.rows)
                    for j, c in enumerate(row) if isinstance(c, str))]
        for name, text in fields:
            if ILLEGAL_CHARACTERS_RE.search(text):
                raise PydanticCustomError(
                    "control_character",
                    "{field} holds a control character, which an xlsx file cannot hold",
                    {"field": name})
        return self


def _check_limits(fmt: str, columns: list[str], rows: list[list[Cell]]) -> None:
    limits = LIMITS[fmt]
    cells = len(rows) * len(columns)
    if len(rows) > limits.rows:
        raise ValueError(f"a {fmt} report has at most {limits.rows} rows")
    if cells > limits.cells:
        raise ValueError(f"a {fmt} report has at most {limits.cells} cells (rows x "
                         f"columns); this one has {cells}")
    text = [*columns, *(cell for row in rows for cell in row if isinstance(cell, str))]
    longest = max(map(len, text), default=0)
    if longest > limits.cell_chars:
        raise ValueError(f"a {fmt} cell or column name holds at most {limits.cell_chars} "
                         f"characters; one has {longest}")
    size = sum(len(t.encode()) for t in text)
    if size > limits.text_bytes:
        raise ValueError(f"a {fmt} report holds at most {limits.text_bytes} bytes of "
                         f"text; this one has {size}")


def csv_safe(cell: Cell) -> Cell:
    """A string a spreadsheet would run as a formula, quoted to stay text."""
    if isinstance(cell, str) and cell.startswith(CSV_FORMULA_STARTS):
        return "'" + cell
    return cell


def write_csv(report: GenerateReport, out: IO[bytes]) -> None:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    writer = csv.writer(text)
    writer.writerow(map(csv_safe, report.columns))
    writer.writerows(map(csv_safe, row) for row in report.rows)
    text.flush()
    text.detach()


def write_xlsx(report: GenerateReport, out: IO[bytes]) -> None:
    workbook = Workbook(write_only=True)
    workbook.properties.title = report.title
    sheet = workbook.create_sheet(re.sub(r"[\[\]:*?/\\]", " ", report.title)[:31] or "Report")
    sheet.append([_xlsx_cell(sheet, c) for c in report.columns])
    for row in report.rows:
        sheet.append([_xlsx_cell(sheet, c) for c in row])
    workbook.save(out)


def _xlsx_cell(sheet: WriteOnlyWorksheet, cell: Cell) -> Cell | WriteOnlyCell:
    """Text as a string cell: openpyxl stores a string starting with ``=`` as a formula."""
    if not isinstance(cell, str):
        return cell
    written = WriteOnlyCell(sheet, cell)
    written.data_type = "s"
    return written


def write_pdf(report: GenerateReport, out: IO[bytes]) -> None:
    pagesize = landscape(A4) if len(report.columns) > 6 else A4
    doc = SimpleDocTemplate(out, pagesize=pagesize, title=report.title)
    table = LongTable([report.columns] + [["" if c is None else str(c) for c in row]
                                          for row in report.rows], repeatRows=1)
    table.setStyle(TableStyle([
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("FONTSIZE", (0, 0), (-1, -1), 8)]))
    styles = getSampleStyleSheet()
    # NOTE: Paragraph parses markup; the title is the caller's text, so escape it.
    doc.build([Paragraph(escape(report.title), styles["Title"]), Spacer(1, 12), table])


WRITERS = {"csv": write_csv, "xlsx": write_xlsx, "pdf": write_pdf}


def write_file(report: GenerateReport, path: str) -> None:
    """Write the report to ``path``: run in a pool child, where the job's timeout can stop
    it (a file object cannot cross the process boundary, a path can)."""
    with open(path, "wb") as out:
        WRITERS[report.format](report, out)


@job_type("generateReport", payload=GenerateReport, timeout_seconds=600)
async def generate_report(payload: GenerateReport, ctx: JobContext) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile() as out:
        await ctx.run_in_process(write_file, payload, out.name)
        out.seek(0)
        artifact = await ctx.artifacts.save(f"report.{payload.format}", out,
                                            CONTENT_TYPES[payload.format])
    return {"artifact": described(artifact, ctx), "rows": len(payload.rows)}
