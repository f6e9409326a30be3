"""Paths the tests share: the checkout's root and the Node 22 binary (from medport's one discovery: this
checkout's pinned Node after `make setup`, unless MEDPORT_NODE / MEDPORT_NODE_MODULES say otherwise)."""

from pathlib import Path

from medport.emulator.node import node_binary

ROOT = Path(__file__).resolve().parents[1]
NODE = node_binary()


def readme_block(name: str) -> str:
    """The fenced code between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in README.md."""
    text = (ROOT / "README.md").read_text("utf-8")
    block = text.split(f"<!-- {name}:begin -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]
    return block.strip().split("\n", 1)[1].rsplit("```", 1)[0]
