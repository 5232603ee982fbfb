"""The config reference (docs/config.md), generated from the two classes' signatures and docstrings.

python -m fashion_lake.tools.reference --write docs/config.md   # refresh the block between the markers
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from docstring_parser import parse

from fashion_lake.data.module import DeepLakeDataModule
from fashion_lake.model import FashionMnistModule

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _default(value: object) -> str:
    if value is inspect.Parameter.empty:
        return "required"
    if inspect.isclass(value):
        return f"`{value.__module__}.{value.__qualname__}`"
    return f"`{value!r}`" if value is not None else "`null`"


def _table(cls: type, section: str) -> str:
    docs = {p.arg_name: " ".join(p.description.split()) for p in parse(cls.__doc__ or "").params}
    lines = [
        f"### `{section}`: `{cls.__module__.split('.')[0]}.{cls.__name__}`",
        "",
        "| key | default | meaning |",
    ]
    lines.append("|---|---|---|")
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        meaning = docs.get(name, "")
        lines.append(f"| `{section}.{name}` | {_default(param.default)} | {meaning.replace('|', '/')} |")
    return "\n".join(lines)


def config_reference() -> str:
    return "\n\n".join([_table(DeepLakeDataModule, "data"), _table(FashionMnistModule, "model")])


def write(page: Path) -> None:
    text = page.read_text()
    block = f"{BEGIN}\n{config_reference()}\n{END}"
    page.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]))
    else:
        print(config_reference())
