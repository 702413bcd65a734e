"""Fixtures that write real dataset files into a test's tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest


class Files:
    """Writes dataset files in every supported format into one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def jsonl(self, rows: list[Any], name: str = "data.jsonl") -> Path:
        path = self.root / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    def text(self, content: str, name: str) -> Path:
        path = self.root / name
        path.write_text(content, encoding="utf-8")
        return path

    def raw(self, content: bytes, name: str) -> Path:
        path = self.root / name
        path.write_bytes(content)
        return path

    def csv(
        self, header: list[str], rows: list[list[Any]], name: str = "data.csv", delimiter: str = ","
    ) -> Path:
        path = self.root / name
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter=delimiter)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    def xlsx(self, header: list[str], rows: list[list[Any]], name: str = "data.xlsx") -> Path:
        import openpyxl

        path = self.root / name
        workbook = openpyxl.Workbook()
        sheet = workbook.active
        sheet.append(header)
        for row in rows:
            sheet.append(row)
        workbook.save(path)
        return path

    def parquet(self, columns: dict[str, list[Any]], name: str = "data.parquet") -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.root / name
        pq.write_table(pa.table(columns), path)
        return path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    """A :class:`Files` writer rooted at ``tmp_path / "in"`` (outputs can go elsewhere)."""
    root = tmp_path / "in"
    root.mkdir()
    return Files(root)
