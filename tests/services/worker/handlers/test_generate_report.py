"""generateReport: the files open in real readers and hold the data."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
from openpyxl import load_workbook
from pypdf import PdfReader

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
