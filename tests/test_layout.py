"""The README's Layout table against the package: one row per package of `src/percolert/`,
naming in its second column (as `name`) every module and sub-package the package has, and
nothing else (a name ending in `/` is a folder of the package, such as the broker's `lua/`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "percolert"
NOT_MODULES = {"__init__.py", "__main__.py"}


def layout_rows() -> dict[str, list[str]]:
    """Each row of the Layout table: its package (as `core` or `web/middleware`) and the
    names its second column gives as `name`."""
    lines = README.read_text(encoding="utf-8").splitlines()
    if "## Layout" not in lines:
        raise AssertionError("README.md has no '## Layout' section")
    start = lines.index("## Layout") + 1
    section: list[str] = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        section.append(line)
    table = [line for line in section if line.startswith("|")]
    if len(table) < 3:
        raise AssertionError("README.md's Layout section has no table with rows")
    rows: dict[str, list[str]] = {}
    for line in table[2:]:  # past the header and the |---| line
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) < 2:
            raise AssertionError(f"README.md's Layout row has fewer than two cells: {line}")
        package = re.findall(r"`([^`]+)`", cells[0])
        if len(package) != 1:
            raise AssertionError(f"README.md's Layout row names no single `package`: {line}")
        if package[0] in rows:
            raise AssertionError(f"README.md's Layout table has two rows for `{package[0]}`")
        rows[package[0]] = re.findall(r"`([^`]+)`", cells[1])
    return rows


def packages() -> dict[str, set[str]]:
    """Each package under src/percolert/ (not the root itself), by its path from there, with
    its modules and sub-packages."""
    found: dict[str, set[str]] = {}
    for init in sorted(PACKAGE.rglob("__init__.py")):
        directory = init.parent
        if directory == PACKAGE:
            continue
        found[directory.relative_to(PACKAGE).as_posix()] = {
            path.stem for path in directory.glob("*.py") if path.name not in NOT_MODULES
        } | {child.name for child in directory.iterdir() if (child / "__init__.py").is_file()}
    return found


def test_every_package_has_a_row_and_every_row_a_package() -> None:
    rows, actual = layout_rows(), packages()
    missing = sorted(set(actual) - set(rows))
    unknown = sorted(set(rows) - set(actual))
    assert not missing, f"README.md's Layout table has no row for package(s) {missing}"
    assert not unknown, f"README.md's Layout table has row(s) for no package: {unknown}"


def test_every_module_is_named_in_its_package_row() -> None:
    rows = layout_rows()
    problems = [
        f"`{package}` row lacks {sorted(modules - set(rows[package]))}"
        for package, modules in sorted(packages().items())
        if package in rows and modules - set(rows[package])
    ]
    assert not problems, "README.md's Layout table misses modules: " + "; ".join(problems)


def test_the_table_names_only_what_exists() -> None:
    actual = packages()
    problems = []
    for package, names in sorted(layout_rows().items()):
        if package not in actual:
            continue  # reported by the first test
        for name in names:
            if name.endswith("/"):
                if not (PACKAGE / package / name).is_dir():
                    problems.append(f"`{package}` row names folder `{name}`, which does not exist")
            elif name not in actual[package]:
                problems.append(f"`{package}` row names `{name}`, no module of {package}")
    assert not problems, "README.md's Layout table names what is not there: " + "; ".join(problems)
