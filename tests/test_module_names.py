"""Names that say which room: no two modules of the package share a file name, but those listed
here with the reason each may (docs/DESIGN.md)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import farm_jupyter

PACKAGE = Path(farm_jupyter.__file__).parent

SHARED = {
    "__init__.py": "a package's own module: Python names it so",
}


def test_no_two_modules_share_a_file_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        where[path.name].append(str(path.relative_to(PACKAGE)))
    repeated = {name: sorted(paths) for name, paths in where.items() if len(paths) > 1 and name not in SHARED}
    assert repeated == {}, "rename one of each (git mv), or list it in SHARED with the reason"


def test_every_shared_name_is_still_shared() -> None:
    names = [path.name for path in PACKAGE.rglob("*.py")]
    assert all(names.count(name) > 1 for name in SHARED)
