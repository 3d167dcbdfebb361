"""Data files of an export bundle: one table's rows as JSON, CSV or HTML, written as they stream.

Every writer takes the column names and an iterable of row batches (what
``governance.connectors.postgres.stream_table`` yields) and writes to a binary stream (a ZIP
entry), never holding more than one batch; :func:`write_formats` writes several formats from one
pass over the batches (each value made plain once). Values are rendered the same way in every format and
every run: timestamps in ISO 8601 (the export session runs in UTC), decimals and network
addresses as text, binary as base64, JSON columns as JSON.

* JSON: an array with one object per line (``[`` / ``{...},`` / ``]``), readable by any JSON
  tool and, line by line, by the quality gate without loading the file.
* CSV: a header row, then one row per record (RFC 4180 quoting); an empty field is a null.
* HTML: a self-contained page with one table; null cells carry ``data-null``.

The readers give the rows back (as column -> value, values as text for CSV and HTML) for the
quality gate.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from html import escape
from html.parser import HTMLParser
from typing import IO, Any, Literal, Protocol

DataFormat = Literal["json", "csv", "html"]
FORMATS: tuple[DataFormat, ...] = ("json", "csv", "html")
# Which format the quality gate reads rows from when a bundle holds several.
READ_PREFERENCE: tuple[DataFormat, ...] = ("json", "csv", "html")

Batches = Iterable[tuple[Sequence[str], Sequence[Sequence[Any]]]]


class BinaryWriter(Protocol):
    def write(self, data: bytes, /) -> Any: ...


def plain_value(value: Any) -> Any:
    """A JSON-compatible rendering of one database value (stable across runs)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value.total_seconds())
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return str(value)  # ip addresses, uuids, ranges ...


def text_value(value: Any) -> str:
    """One value as CSV/HTML text ('' for null; JSON for structured values)."""
    return _text(plain_value(value))


# Values already in their plain form: passed through untouched (most columns of most rows), so a
# row costs one type check per value, not the whole of plain_value.
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})
# Plain values whose CSV/HTML text is not str(value) (csv writes None as an empty field itself).
_RETEXT_TYPES = frozenset({bool, dict, list})
# One encoder for every record: json.dumps with options builds a new one per call.
_RECORD_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def _text(plain: Any) -> str:
    if plain is None:
        return ""
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if isinstance(plain, (dict, list)):
        return json.dumps(plain, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return str(plain)


def plain_row(row: Sequence[Any]) -> list[Any]:
    """``plain_value`` of every value of one row (the same result, at a type check per value)."""
    return [v if type(v) in _PLAIN_TYPES else plain_value(v) for v in row]


class _FormatWriter:
    """One data file being written: ``begin``, then ``add`` per batch of plain rows, then ``end``."""

    def __init__(self, out: BinaryWriter, columns: Sequence[str]) -> None:
        self.out = out
        self.columns = list(columns)
        self.rows = 0

    def begin(self) -> None: ...

    def add(self, batch: Sequence[Sequence[Any]]) -> None: ...

    def end(self) -> int:
        return self.rows


class _JsonWriter(_FormatWriter):
    """Rows as a JSON array, one object per line."""

    def begin(self) -> None:
        self.out.write(b"[")

    def add(self, batch: Sequence[Sequence[Any]]) -> None:
        if not batch:
            return
        columns, encode = self.columns, _RECORD_ENCODER.encode
        lines = ",\n".join([encode(dict(zip(columns, row, strict=True))) for row in batch])
        self.out.write(("\n" if self.rows == 0 else ",\n").encode() + lines.encode())
        self.rows += len(batch)

    def end(self) -> int:
        self.out.write(b"\n]\n")
        return self.rows


class _CsvWriter(_FormatWriter):
    """A header row, then one row per record (RFC 4180 quoting); an empty field is a null."""

    def begin(self) -> None:
        self._text = io.StringIO()
        self._writer = csv.writer(self._text, lineterminator="\r\n")
        self._writer.writerow(self.columns)

    def add(self, batch: Sequence[Sequence[Any]]) -> None:
        retext = _RETEXT_TYPES
        self._writer.writerows([p if type(p) not in retext else _text(p) for p in row] for row in batch)
        self.rows += len(batch)
        self.out.write(self._text.getvalue().encode())
        self._text.seek(0)
        self._text.truncate()

    def end(self) -> int:
        self.out.write(self._text.getvalue().encode())
        return self.rows


class _HtmlWriter(_FormatWriter):
    """A self-contained page with one table; null cells carry ``data-null``."""

    def __init__(self, out: BinaryWriter, columns: Sequence[str], *, title: str = "", description: str = "") -> None:
        super().__init__(out, columns)
        self._title = title
        self._description = description

    def begin(self) -> None:
        header = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        self.out.write(_HTML_HEAD.format(title=escape(self._title), description=escape(self._description),
                                         header=header).encode())  # fmt: skip

    def add(self, batch: Sequence[Sequence[Any]]) -> None:
        lines = []
        for row in batch:
            cells = "".join("<td data-null></td>" if p is None else f"<td>{escape(_text(p))}</td>" for p in row)
            lines.append(f"<tr>{cells}</tr>\n")
        self.out.write("".join(lines).encode())
        self.rows += len(batch)

    def end(self) -> int:
        self.out.write(_HTML_TAIL.format(rows=self.rows).encode())
        return self.rows


_HTML_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:.9em}}
th,td{{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}}th{{background:#f3f3f3}}
td[data-null]{{background:#fafafa}}</style></head>
<body><h1>{title}</h1><p>{description}</p>
<table><thead><tr>{header}</tr></thead><tbody>
"""
_HTML_TAIL = "</tbody></table>\n<p>{rows} row(s).</p></body></html>\n"


def _format_writer(fmt: DataFormat, out: BinaryWriter, columns: Sequence[str], html: Mapping[str, str]) -> _FormatWriter:
    if fmt == "json":
        return _JsonWriter(out, columns)
    if fmt == "csv":
        return _CsvWriter(out, columns)
    if fmt == "html":
        return _HtmlWriter(out, columns, **html)
    raise ValueError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")


def write_formats(outs: Mapping[DataFormat, BinaryWriter], columns: Sequence[str], batches: Batches,
                  **html: str) -> int:  # fmt: skip
    """Write one table's rows into every format of ``outs`` at once, from one pass over
    ``batches``: each value is made plain once and each batch goes to every file before the next
    is read. Returns the number of rows (the same in every file)."""
    writers = [_format_writer(fmt, out, columns, html) for fmt, out in outs.items()]
    for writer in writers:
        writer.begin()
    for _columns, batch in batches:
        plain = [plain_row(row) for row in batch]
        for writer in writers:
            writer.add(plain)
    rows = 0
    for writer in writers:
        rows = writer.end()
    return rows


def write_json(out: BinaryWriter, columns: Sequence[str], batches: Batches) -> int:
    """Rows as a JSON array, one object per line; returns the number of rows."""
    return write_formats({"json": out}, columns, batches)


def write_csv(out: BinaryWriter, columns: Sequence[str], batches: Batches) -> int:
    return write_formats({"csv": out}, columns, batches)


def write_html(out: BinaryWriter, columns: Sequence[str], batches: Batches, *, title: str = "", description: str = "") -> int:
    return write_formats({"html": out}, columns, batches, title=title, description=description)


def write_rows(fmt: DataFormat, out: BinaryWriter, columns: Sequence[str], batches: Batches, **html: str) -> int:
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return write_formats({fmt: out}, columns, batches, **html)


# --------------------------------------------------------------------------------------------
# Reading back (quality gate)


class BundleFormatError(ValueError):
    """A data file cannot be read back (corrupted or not written by this module)."""


def read_json(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    lines = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
    first = lines.readline()
    if first.rstrip("\n") != "[":
        raise BundleFormatError("a JSON data file does not start with '['")
    for line in lines:
        text = line.rstrip("\n")
        if text == "]":
            return
        try:
            record = json.loads(text[:-1] if text.endswith(",") else text)
        except json.JSONDecodeError:
            raise BundleFormatError("a JSON data file holds a line that is not a record") from None
        if not isinstance(record, dict):
            raise BundleFormatError("a JSON data file holds a line that is not a record")
        yield record
    raise BundleFormatError("a JSON data file is truncated")


def read_csv(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        raise BundleFormatError("a CSV data file has no header")
    for row in reader:
        if len(row) != len(header):
            raise BundleFormatError("a CSV data file has a row of the wrong width")
        yield {name: (value if value != "" else None) for name, value in zip(header, row, strict=True)}


class _TableParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.header: list[str] = []
        self.rows: list[list[str | None]] = []
        self._cell: list[str] | None = None
        self._null = False
        self._in_head = False
        self._row: list[str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
            self._null = any(name == "data-null" for name, _ in attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(None if self._null else "".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._in_head:
                self.header = [c or "" for c in self._row]
            else:
                self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def read_html(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    parser = _TableParser()
    text = io.TextIOWrapper(stream, encoding="utf-8")
    while chunk := text.read(1 << 16):
        parser.feed(chunk)
        ready, parser.rows = parser.rows, []
        for row in ready:
            if len(row) != len(parser.header):
                raise BundleFormatError("an HTML data file has a row of the wrong width")
            yield dict(zip(parser.header, row, strict=True))
    parser.close()
    for row in parser.rows:
        if len(row) != len(parser.header):
            raise BundleFormatError("an HTML data file has a row of the wrong width")
        yield dict(zip(parser.header, row, strict=True))


def read_rows(fmt: DataFormat, stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    if fmt == "json":
        return read_json(stream)
    if fmt == "csv":
        return read_csv(stream)
    return read_html(stream)
