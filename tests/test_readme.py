"""The README's examples run as written: every ```python block, in order, in one namespace."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_blocks(markdown: str) -> list[str]:
    """The code of the markdown's fenced ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```\s*$", markdown, flags=re.MULTILINE | re.DOTALL)


def run_blocks(markdown: str) -> dict:
    """Executes the blocks in one namespace; a failure's traceback names the block."""
    namespace = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(markdown), 1):
        exec(compile(block, f"README.md, python block {number}", "exec"), namespace)
    return namespace


def test_the_readme_has_python_examples():
    assert python_blocks(README.read_text())


def test_the_readme_python_examples_run_as_written():
    run_blocks(README.read_text())
