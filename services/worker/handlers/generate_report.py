"""``generateReport``: a table from the payload as PDF (reportlab), XLSX (openpyxl) or CSV.

The file is written to a temporary file in a worker thread and streamed into the
artifact store a chunk at a time, so a large report is not held in memory twice.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import tempfile
from typing import IO, Any, Literal

from openpyxl import Workbook
from pydantic import Field, ValidationInfo, field_validator
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


class GenerateReport(Payload):
    format: Literal["pdf", "xlsx", "csv"]
    title: str = Field(min_length=1, max_length=200)
    columns: list[str] = Field(min_length=1, max_length=100)
    rows: list[list[Cell]] = Field(default_factory=list, max_length=100_000)

    @field_validator("rows")
    @classmethod
    def _rows_match_columns(cls, rows: list[list[Cell]],
                            info: ValidationInfo) -> list[list[Cell]]:
        width = len(info.data.get("columns") or [])
        for i, row in enumerate(rows):
            if width and len(row) != width:
                raise ValueError(f"row {i} has {len(row)} cells; there are {width} columns")
        return rows


def write_csv(report: GenerateReport, out: IO[bytes]) -> None:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    writer = csv.writer(text)
    writer.writerow(report.columns)
    writer.writerows(report.rows)
    text.flush()
    text.detach()


def write_xlsx(report: GenerateReport, out: IO[bytes]) -> None:
    workbook = Workbook(write_only=True)
    workbook.properties.title = report.title
    sheet = workbook.create_sheet(re.sub(r"[\[\]:*?/\\]", " ", report.title)[:31] or "Report")
    sheet.append(report.columns)
    for row in report.rows:
        sheet.append(row)
    workbook.save(out)


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
    doc.build([Paragraph(report.title, styles["Title"]), Spacer(1, 12), table])


WRITERS = {"csv": write_csv, "xlsx": write_xlsx, "pdf": write_pdf}


@job_type("generateReport", payload=GenerateReport, timeout_seconds=600)
async def generate_report(payload: GenerateReport, ctx: JobContext) -> dict[str, Any]:
    with tempfile.TemporaryFile() as out:
        await asyncio.to_thread(WRITERS[payload.format], payload, out)
        out.seek(0)
        artifact = await ctx.artifacts.save(f"report.{payload.format}", out,
                                            CONTENT_TYPES[payload.format])
    return {"artifact": described(artifact, ctx), "rows": len(payload.rows)}
