"""Every table README and results/ publish equals what its marked report command prints from the stored runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from alignbench.errors import ConfigError
from alignbench.published import PUBLISHED, check, find_tables, main, update

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_table_equals_its_command_over_the_stored_runs(name):
    tables = find_tables(ROOT / name)
    assert tables, f"{name} has no marked table"
    assert check(ROOT / name, ROOT) == []


def test_a_number_edited_by_hand_is_caught_and_update_restores_the_table(tmp_path):
    original = (ROOT / "results/README_table.md").read_text(encoding="utf-8")
    row = next(line for line in original.split("\n") if line.startswith("| 10k") and "asif" in line)
    edited = original.replace(row, row.replace("12.0 ± 1.7", "13.0 ± 1.7"))
    assert edited != original
    f = tmp_path / "table.md"
    f.write_text(edited, encoding="utf-8")
    problems = check(f, ROOT)
    assert len(problems) == 1 and "1 line(s)" in problems[0] and "make tables" in problems[0]
    assert main([str(f), "--root", str(ROOT)]) == 1
    assert update(f, ROOT) == 1
    assert f.read_text(encoding="utf-8") == original
    assert check(f, ROOT) == [] and update(f, ROOT) == 0


def test_a_marker_without_a_table_or_with_a_command_that_writes_files_is_an_error(tmp_path):
    f = tmp_path / "t.md"
    f.write_text("<!-- alignbench report --results results/default --format markdown -->\n\ntext\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no table right under the marker"):
        find_tables(f)
    f.write_text("<!-- alignbench report --results results/default --plot -->\n| a |\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="only print it.*--plot"):
        find_tables(f)


def test_a_stale_or_missing_caption_is_caught_and_update_writes_it_under_the_table(tmp_path):
    """The caption says what the cells claim (intervals, one-seed bootstrap rows, the † search): it is checked too."""
    original = (ROOT / "results/README_table.md").read_text(encoding="utf-8")
    caption = next(line for line in original.split("\n") if line.startswith("Percent."))
    f = tmp_path / "table.md"
    f.write_text(original.replace(caption, caption.replace("Student t", "normal")), encoding="utf-8")
    problems = check(f, ROOT)
    assert len(problems) == 1 and "caption" in problems[0]
    assert update(f, ROOT) == 1 and f.read_text(encoding="utf-8") == original
    # a table published without its caption gets one; the author's prose under it is kept
    marker = "<!-- alignbench report --results results/default --format markdown -->"
    table = [line for line in original.split("\n") if line.startswith("|")][:10]
    f.write_text("\n".join([marker, *table, "", "My own words.", ""]), encoding="utf-8")
    assert "(none published)" in check(f, ROOT)[0]
    update(f, ROOT)
    text = f.read_text(encoding="utf-8").split("\n")
    assert text[11] == "" and text[12].startswith("Percent.") and text[-2] == "My own words." and check(f, ROOT) == []
