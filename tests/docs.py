"""The project's documentation as the tests read it: the README and every page under docs/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_text() -> str:
    """Every documentation file's text, one after the other."""
    return "\n".join(path.read_text(encoding="utf-8") for path in DOC_FILES)
