"""Paths the tests share: the checkout's root and the pinned Node binary."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = str(ROOT / "node_modules" / ".bin" / "node")


def readme_block(name: str) -> str:
    """The fenced code between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in README.md."""
    text = (ROOT / "README.md").read_text("utf-8")
    block = text.split(f"<!-- {name}:begin -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]
    return block.strip().split("\n", 1)[1].rsplit("```", 1)[0]
