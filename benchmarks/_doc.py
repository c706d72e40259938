"""The part of docs/benchmarks.md a benchmark writes: between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`, so that a run replaces its own figures and leaves the hand-written
analyses around them (earlier runs, profiles, what was tried) as they are."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(name: str, body: str, doc: Path = DOC) -> None:
    """Write `body` between the markers of `name` in `doc`; markers absent: append both."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        text = text[:start] + section + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)
    print(f"updated {doc} ({name})")
