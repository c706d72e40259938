"""A benchmark run rewrites only its own figures in docs/benchmarks.md: the hand-written
analyses around its markers (earlier runs, profiles, what was tried) survive the run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _doc import markers, replace_section  # noqa: E402


def test_a_run_replaces_its_section_and_keeps_the_analyses_around_it(tmp_path):
    doc = tmp_path / "benchmarks.md"
    begin, end = markers("migration")
    doc.write_text(
        f"# Benchmarks\n\n## Cluster\n\ncluster notes\n\n{begin}\n## Migration\n\nold table\n"
        f"{end}\n\n### Session 16\n\nwhat was tried\n\n## Range purge\n\npurge figures\n"
    )
    replace_section("migration", "## Migration\n\nnew table\n", doc)
    text = doc.read_text()
    assert "new table" in text and "old table" not in text
    for kept in ("cluster notes", "### Session 16\n\nwhat was tried", "purge figures"):
        assert kept in text
    assert text.index(begin) < text.index("new table") < text.index(end)
    assert text.count(begin) == text.count(end) == 1


def test_a_section_the_doc_lacks_is_appended_with_its_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Cluster\n\nfigures\n")
    replace_section("backup", "## Backup\n\nfull backup 77 s", doc)
    replace_section("backup", "## Backup\n\nfull backup 60 s", doc)
    text = doc.read_text()
    begin, end = markers("backup")
    assert text.startswith("# Benchmarks\n\n## Cluster\n\nfigures\n")
    assert f"{begin}\n## Backup\n\nfull backup 60 s\n{end}\n" in text
    assert "77 s" not in text and text.count(begin) == 1
