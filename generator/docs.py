"""`python -m medport.generator.docs` refreshes the README's config reference from the schema."""
from pathlib import Path

from .starter import config_reference_markdown

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def refresh(readme: Path) -> bool:
    text = readme.read_text("utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{config_reference_markdown()}{END}{tail}"
    if new != text:
        readme.write_text(new, "utf-8")
    return new != text


if __name__ == "__main__":
    print("README updated" if refresh(Path(__file__).resolve().parent.parent / "README.md") else "README up to date")
