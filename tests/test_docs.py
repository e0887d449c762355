"""The docs pages' examples run as written, as the README's do (tests/test_readme.py)."""

from pathlib import Path

import pytest
from test_readme import python_blocks

DOCS = Path(__file__).parent.parent / "docs"
PAGES_WITH_CODE = ["porting.md"]


def test_every_docs_page_with_python_examples_is_run():
    with_code = sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p.read_text()))
    assert with_code == sorted(PAGES_WITH_CODE)


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_the_python_examples_of_a_docs_page_run_as_written(page):
    namespace = {"__name__": "docs"}
    for number, block in enumerate(python_blocks((DOCS / page).read_text()), 1):
        exec(compile(block, f"docs/{page}, python block {number}", "exec"), namespace)
