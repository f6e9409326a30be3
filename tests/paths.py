"""Paths the tests share: the checkout's root and the pinned Node binary."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = str(ROOT / "node_modules" / ".bin" / "node")
