"""The repository's documents and comments point only at what the repository holds: a user has only the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A relative path, in any document or comment, that climbs out of the repository from the file that names it.
CLIMBING_PATH = re.compile(r"(?:\.\./)+[\w.-][\w./-]*")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".tmpl", ".j2", ".cfg", ".conf", ""}


def outside_pointers(root: Path) -> list[str]:
    """`file:line: text` for every tracked text line that names a path outside the repository."""
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    inside = root.resolve()
    found = []
    for name in tracked.split():
        path = root / name
        # This file's own examples climb out on purpose.
        if path.suffix not in TEXT_SUFFIXES or not path.is_file() or name == "tests/test_structure.py":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            targets = [(path.parent / match).resolve() for match in CLIMBING_PATH.findall(line)]
            if any(target != inside and inside not in target.parents for target in targets):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_a_pointer_outside_is_found(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("see ../README.md\nsee ../../elsewhere/notes.md\n")
    subprocess.run(["git", "add", "docs/notes.md"], cwd=tmp_path, check=True)
    assert outside_pointers(tmp_path) == ["docs/notes.md:2: see ../../elsewhere/notes.md"]


def test_documents_and_comments_point_only_inside_the_repository():
    assert outside_pointers(ROOT) == []
