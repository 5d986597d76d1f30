"""YAML read as data, with one-line errors: no tags that build objects, no duplicate keys, a bounded file size,
and a bound on the size the document has once its aliases are expanded (an alias bomb is refused in
milliseconds instead of filling memory)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20
MAX_EXPANDED = 100_000  # values and entries, aliases counted as often as they are used


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)


def load(path: Path) -> Any:
    """The data in the YAML file ``path``; a ValueError in one line naming the file (and line) otherwise."""
    try:
        raw = path.read_bytes()[: MAX_BYTES + 1]
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ValueError(f"{path}: larger than {MAX_BYTES >> 20} MiB: not a config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    return parse(text, str(path))


def parse(text: str, where: str) -> Any:
    """The data in the YAML ``text``; a ValueError in one line starting with ``where`` otherwise."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"{where}: larger than {MAX_BYTES >> 20} MiB: not a config")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded(node, {}) > MAX_EXPANDED:
            raise yaml.YAMLError(f"more than {MAX_EXPANDED} values once its aliases (*name) are expanded: refused")
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = f": line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(f"{where}{line}: {' '.join(str(problem).split())}") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to be a config") from None
    finally:
        loader.dispose()


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` becomes with every alias expanded (each node's size computed once)."""
    if id(node) not in sizes:
        sizes[id(node)] = 0  # a node that contains itself counts once
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        sizes[id(node)] = 1 + sum(min(_expanded(c, sizes), MAX_EXPANDED + 1) for c in children)
    return sizes[id(node)]
