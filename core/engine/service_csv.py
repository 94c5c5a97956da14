"""Reading a business's service ID file: CSV with the header service_id,customer_id (ASCII)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TextIO

from ..errors import ValidationError

CSV_HEADER = ["service_id", "customer_id"]
PROGRESS_EVERY = 10_000  # rows between progress reports


class ServiceRows(NamedTuple):
    """The rows of a service ID file, and the line each came from (for error messages)."""

    rows: list[tuple[str, str | None]]  # (service_id, customer_id or None)
    lines: list[int]


def read_service_csv_file(
    path: str | Path, progress: Callable[[int], None] | None = None, *, name: str | None = None
) -> ServiceRows:
    """Read the whole file (streamed); ValidationError naming the file (or name) and line for a bad one."""
    with open(path, newline="", encoding="ascii", errors="strict") as f:
        try:
            return read_service_csv(f, progress)
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{name or path}: not ASCII text ({exc.reason} at byte {exc.start})") from None


def read_service_csv(f: TextIO, progress: Callable[[int], None] | None = None) -> ServiceRows:
    """Parse rows from an open text file; blank lines are skipped, a missing customer ID is None."""
    reader = csv.reader(f, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationError("the CSV file is empty; it needs the header service_id,customer_id") from None
    except csv.Error as exc:
        raise ValidationError(f"line 1: {exc}") from None
    if [h.strip() for h in header] != CSV_HEADER:
        raise ValidationError(f"line 1: header must be exactly service_id,customer_id (got {','.join(header)})")
    out = ServiceRows([], [])
    try:
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) == 1:
                row = [row[0], ""]
            if len(row) != 2:
                raise ValidationError(f"line {reader.line_num}: expected 2 fields (service_id,customer_id), got {len(row)}")
            out.rows.append((row[0], row[1] or None))
            out.lines.append(reader.line_num)
            if progress is not None and len(out.rows) % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
    except csv.Error as exc:
        raise ValidationError(f"line {reader.line_num}: {exc}") from None
    if progress is not None:
        progress(len(out.rows) % PROGRESS_EVERY)
    return out
