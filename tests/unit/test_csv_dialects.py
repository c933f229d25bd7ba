"""CSV files as users have them: other delimiters, decimal commas, other encodings."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from modelyard.config import parse_settings
from modelyard.data.sources import detect_delimiter, read_table, read_task_frame
from modelyard.errors import ModelyardError
from tests.conftest import toy_frame, toy_params

ROWS = "id{d}name{d}price\n1{d}bolt{d}0.5\n2{d}nut, small{d}1.25\n3{d}washer{d}2\n"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_the_delimiter_is_detected(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "parts.csv"
    text = ROWS.format(d=delimiter)
    if delimiter == ",":
        text = text.replace("nut, small", '"nut, small"')  # a quoted delimiter is no field break
    path.write_text(text)
    assert detect_delimiter(path) == delimiter
    frame = read_table(path)
    assert list(frame.columns) == ["id", "name", "price"]
    assert frame["name"].tolist() == ["bolt", "nut, small", "washer"]
    assert frame["price"].tolist() == [0.5, 1.25, 2.0]
    assert frame.attrs["delimiter"] == delimiter


def test_decimal_comma_and_latin1_are_read_when_the_task_says_so(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_bytes("name;price\nCrème;1,5\nBrûlée;2,25\n".encode("latin-1"))
    with pytest.raises(ModelyardError, match="not UTF-8 text") as error:
        read_table(path)
    assert "source.encoding" in error.value.hint
    frame = read_table(path, decimal=",", encoding="latin-1")
    assert frame["name"].tolist() == ["Crème", "Brûlée"] and frame["price"].tolist() == [1.5, 2.25]


@pytest.mark.parametrize(
    ("text", "decimal", "prices"),
    [
        ("name;price;qty\na;1,5;3\nb;2,25;4\nc;-0,5;1\n", ",", [1.5, 2.25, -0.5]),  # a European export
        ("name;price;qty\na;1.5;3\nb;2.25;4\nc;-0.5;1\n", ".", [1.5, 2.25, -0.5]),
        ("name;price;code\na;1.5;1,2\nb;2.5;3,4\nc;0.5;5,6\n", ".", [1.5, 2.5, 0.5]),  # points win: "1,2" is text
    ],
)
def test_the_decimal_mark_is_detected(tmp_path: Path, text: str, decimal: str, prices: list[float]) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(text)
    frame = read_table(path)
    assert frame.attrs["decimal"] == decimal and frame["price"].tolist() == prices


def test_a_gzip_file_named_csv_is_called_what_it_is(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    with pytest.raises(ModelyardError, match="gzip-compressed"):
        read_table(path)


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a PNG image"), (b"PK\x03\x04\x14\x00\x00\x00", "a ZIP archive")],
)
def test_a_binary_file_named_csv_is_called_what_it_is(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "data.csv"  # an image or a zip (an .xlsx is one) saved under a .csv name
    path.write_bytes(content)
    with pytest.raises(ModelyardError, match=f"is {said}"):
        read_table(path)


def test_a_semicolon_task_runs_and_a_wrong_delimiter_is_named(tmp_path: Path) -> None:
    (tmp_path / "data" / "sources").mkdir(parents=True)
    toy_frame(60).to_csv(tmp_path / "data" / "sources" / "toy.csv", sep=";", index=False)
    auto = parse_settings(toy_params()).task("toy")
    frame = read_task_frame(auto, tmp_path)
    assert {"color", "size", "x1", "x2", "label"} <= set(frame.columns) and len(frame) == 60
    forced = parse_settings(toy_params(source={"path": "data/sources/toy.csv", "delimiter": "|"})).task("toy")
    with pytest.raises(ModelyardError, match=r"read with delimiter '\|' \(set\), its header gives 1 column") as error:
        read_task_frame(forced, tmp_path)
    assert "source.delimiter" in error.value.hint


def test_an_unknown_encoding_is_a_params_error() -> None:
    with pytest.raises(ModelyardError, match="unknown text encoding 'utf-9'"):
        parse_settings(toy_params(source={"path": "data/sources/toy.csv", "encoding": "utf-9"}))


def test_source_dialect_keys_round_trip_through_pandas(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"]})
    frame.to_csv(tmp_path / "t.csv", sep="\t", decimal=",", index=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.csv", delimiter="\t", decimal=","), frame)
