"""Tables 2 and 3 generated from the spec equal the paper's (PAPER.md §3)."""

from pathlib import Path

import pytest

from fipo.tables import settings_table, to_csv, to_markdown, write_settings_tables

SHARED_PAPER = Path(__file__).resolve().parents[2] / "shared" / "PAPER.md"

# PAPER.md's Table 2, verbatim (checked against ../shared/PAPER.md below where that file is present).
PAPER_TABLE_2 = """\
| global batch (prompts) / group size G | 512 / 16 | 512 / 16 |
| lr, scheduler | 1e-6, constant, 10 warm-up steps | same |
| weight decay / grad clip | 0.1 / 1.0 | same |
| max prompt / max response / overlong buffer | 2048 / 20480 / 4096 | same |
| sampling temperature / top-p (training) | 1.0 / 1.0 | same |
| dual clip c / policy clip | 10.0 / [0.2, 0.28] | same |
| KL penalty | 0 | 0 |
| mini-batch (prompts) | 32 (16 updates/step) | 64 (8 updates/step) |
| loss | DAPO | Future-KL |
| decay rate τ / f clip range / safety threshold | – | 32 / [1.0, 1.2] / 10.0 |
"""


def paper_rows(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.strip().splitlines():
        label, dapo, fipo = (cell.strip() for cell in line.strip("|").split("|"))
        rows[label] = (dapo, dapo if fipo == "same" else fipo)
    return rows


def generated(number: int) -> dict[str, tuple[str, str]]:
    header, rows = settings_table(number)
    assert header == ["setting", "DAPO", "FIPO"]
    return {row[0]: (row[1], row[2]) for row in rows}


def test_the_embedded_table_is_the_one_in_paper_md():
    if not SHARED_PAPER.is_file():
        pytest.skip("../shared/PAPER.md is not beside this checkout")
    assert PAPER_TABLE_2 in SHARED_PAPER.read_text()


def test_table2_equals_the_paper():
    assert generated(2) == paper_rows(PAPER_TABLE_2)


def test_table3_is_table2_with_the_papers_7b_differences():
    expected = paper_rows(PAPER_TABLE_2)
    expected["global batch (prompts) / group size G"] = ("512 / 16", "512 / 32")
    expected["max prompt / max response / overlong buffer"] = ("2048 / 8192 / 4096", "2048 / 10240 / 2048")
    expected["decay rate τ / f clip range / safety threshold"] = ("–", "32 / [0.8, 1.2] / 3.0")
    expected["context window"] = ("32768", "32768")
    assert generated(3) == expected


def test_tables_are_written_as_csv_and_markdown(tmp_path):
    paths = write_settings_tables(tmp_path)
    assert sorted(p.name for p in paths) == ["table2.csv", "table2.md", "table3.csv", "table3.md"]
    header, rows = settings_table(2)
    assert (tmp_path / "table2.md").read_text() == to_markdown(header, rows)
    assert (tmp_path / "table2.csv").read_text() == to_csv(header, rows)
    assert "| mini-batch (prompts) | 32 (16 updates/step) | 64 (8 updates/step) |" in (tmp_path / "table2.md").read_text()


def test_markdown_escapes_pipes_in_cells():
    import random
    import re

    rng = random.Random()
    columns = rng.randint(2, 5)
    cells = ["".join(rng.choice("ab|| ") for _ in range(rng.randint(0, 8))) for _ in range(columns)]
    header = [f"h|{i}" for i in range(columns)]
    text = to_markdown(header, [cells])
    for line, expected in zip(text.splitlines()[::2], (header, cells)):
        # the row splits, at the "|" that are not escaped, into exactly its cells
        parts = re.split(r"(?<!\\)\|", line)[1:-1]
        assert [p[1:-1].replace(r"\|", "|") for p in parts] == expected, (line, expected)
