"""The README tells the truth about the code: its metric table is the schema's."""

from pathlib import Path

from harness.metrics import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_metric_table_is_the_schema():
    text = README.read_text()
    begin, end = "<!-- metrics:begin -->\n", "<!-- metrics:end -->"
    assert begin in text and end in text
    table = text[text.index(begin) + len(begin):text.index(end)]
    assert table == markdown_table()
