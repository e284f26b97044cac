"""The README's option table covers every option of `uvicorn --help` and `cppuvicorn --help`.

The table can then not go stale: a Uvicorn release that adds an option, or a cppuvicorn option
added without a line in the README, fails here.
"""

from __future__ import annotations

import re

from conftest import REPO_DIR, require_kind
from test_cli import run_cli

README = REPO_DIR / "README.md"
OPTION_RE = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
# An option's own line in click's help: "  --name TYPE  help" or "  --flag / --no-flag".
HELP_LINE_RE = re.compile(r"^  (--[a-z0-9][a-z0-9-]*)(?: / (--[a-z0-9][a-z0-9-]*))?(?=\s|$)")


def _options_section() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Options\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert m, "README.md has no '## Options' section"
    return m.group(1)


def _table_rows(section: str) -> dict[str, str]:
    """Option → status cell, for every row of the option table."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `--") or len(cells) != 2:
            continue
        for option in OPTION_RE.findall(cells[0]):
            assert option not in rows, f"{option} has two rows"
            rows[option] = cells[1]
    return rows


def _help_options(kind: str) -> set[str]:
    out = run_cli(kind, "--help")
    assert out.returncode == 0, out.stderr
    options = set()
    for line in out.stdout.splitlines():
        m = HELP_LINE_RE.match(line)
        if m:
            options.update(o for o in m.groups() if o)
    return options


def test_table_lists_every_uvicorn_option_and_only_those():
    rows = _table_rows(_options_section())
    uvicorn = _help_options("uvicorn")
    assert len(uvicorn) > 50, sorted(uvicorn)  # the help parser itself works
    assert not sorted(uvicorn - rows.keys()), f"uvicorn options missing from README: {sorted(uvicorn - rows.keys())}"
    assert not sorted(rows.keys() - uvicorn), f"README rows for no uvicorn option: {sorted(rows.keys() - uvicorn)}"


def test_readme_names_every_cppuvicorn_option():
    require_kind("cppuvicorn")
    section = _options_section()
    mine = _help_options("cppuvicorn")
    missing = sorted(mine - set(OPTION_RE.findall(section)))
    assert not missing, f"cppuvicorn options missing from README's Options section: {missing}"


def test_no_row_is_unsupported_without_a_reason():
    for option, status in _table_rows(_options_section()).items():
        assert status, option
        if "not supported" in status.lower():
            reason = status.lower().split("not supported", 1)[1]
            assert len(reason.split()) >= 5, f"{option}: {status}"
