"""The repository's documents and comments point only at what the repository holds: a user has only the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What no document or comment may point at: files beside the repository, and guides it does not hold.
OUTSIDE = re.compile(r"\.\./shared|GUIDE\.md|GUIDE section")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".tmpl", ".j2", ".cfg", ".conf", ""}


def outside_pointers(root: Path) -> list[str]:
    """`file:line: text` for every tracked text line that points outside the repository."""
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    found = []
    for name in tracked.split():
        path = root / name
        if path.suffix in TEXT_SUFFIXES and path.is_file() and name != "tests/test_structure.py":
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if OUTSIDE.search(line):
                    found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_a_pointer_outside_is_found(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "notes.md").write_text("fine\nsee ../shared/seed/README.md\n")
    subprocess.run(["git", "add", "notes.md"], cwd=tmp_path, check=True)
    assert outside_pointers(tmp_path) == ["notes.md:2: see ../shared/seed/README.md"]


def test_documents_and_comments_point_only_inside_the_repository():
    assert outside_pointers(ROOT) == []
