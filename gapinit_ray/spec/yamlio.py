"""YAML reading for specs: the safe loader (``1e-4`` is a float, duplicate keys are refused) and the
map from field paths to line numbers that error messages point at.

The loader is bounded before anything expands: nesting deeper than :data:`MAX_DEPTH`, aliases that
together expand to more than :data:`MAX_ALIAS_NODES` nodes (nested anchors, a "billion laughs") and an
alias to a node that contains it are refused while the document is composed (:class:`YamlLimitError`),
so neither the line map, nor the constructor, nor validation ever walks an expanded tree. Readers of spec
files also refuse files over :data:`MAX_SPEC_BYTES`."""

from __future__ import annotations

import re
from typing import Any

import yaml

#: deepest nesting of collections a spec may have (the shipped specs need 5)
MAX_DEPTH = 64
#: nodes all aliases of a document may expand to together (an anchor reused for a section or two is a
#: few dozen)
MAX_ALIAS_NODES = 10_000
#: largest spec text (100,000 seeds in a list are about 0.7 MB)
MAX_SPEC_BYTES = 4 * 2**20


class YamlLimitError(yaml.composer.ComposerError):
    """The document is refused before it expands: too deep, too many alias expansions, a recursive alias."""


try:  # libyaml's scanner and parser (ten times PyYAML's: 100,000 seeds load in about a second)
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None

if _CParser is not None:

    class _Base(yaml.composer.Composer, _CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's events, composed here (so the bounds below apply), constructed safely."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            yaml.composer.Composer.__init__(self)

else:
    _Base = yaml.SafeLoader  # type: ignore[misc,assignment]


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe YAML loading that also reads ``1e-4`` as a float (YAML 1.1 needs ``1.0e-4``), with the
    bounds above on nesting and alias expansion."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to (set once it is complete)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias: PyYAML's own error
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlLimitError(
                        None,
                        None,
                        f"alias *{event.anchor} refers to a node that contains it (a recursive alias); "
                        "a spec is a tree: write the value out",
                        event.start_mark,
                    )
                self._expanded += size
                if self._expanded > MAX_ALIAS_NODES:
                    raise YamlLimitError(
                        None,
                        None,
                        f"aliases expand to more than {MAX_ALIAS_NODES} nodes (nested anchors?); refused "
                        "before expanding: write the values out, or use fewer aliases",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlLimitError(
                None,
                None,
                f"nested more than {MAX_DEPTH} levels deep; a spec needs a handful of levels",
                event.start_mark,
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(c)] for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return node


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """YAML says mapping keys are unique, and PyYAML silently keeps the last one: in a spec a second
    ``lora:`` or ``name:`` is almost always a paste mistake that changes the experiment, so refuse it."""
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            seen = first.get(key)
        except TypeError:  # an unhashable key: the mapping constructor reports it
            continue
        if seen is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen + 1}); keys must be unique: merge the two, "
                "or remove one",
                key_node.start_mark,
            )
        first[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _compose(text: str) -> tuple[_Loader, yaml.Node | None]:
    loader = _Loader(text)
    try:
        return loader, loader.get_single_node()
    except BaseException:
        loader.dispose()
        raise


def yaml_load(text: str) -> Any:
    """The data of one YAML document, loaded safely and within the bounds above."""
    return yaml_load_with_lines(text, lines=False)[0]


def yaml_load_with_lines(text: str, *, lines: bool = True) -> tuple[Any, dict[tuple, int]]:
    """The data of one YAML document and its :func:`line_map`, from one (bounded) composition."""
    loader, root = _compose(text)
    try:
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, (_lines_of(root) if lines else {})


def line_map(text: str) -> dict[tuple, int]:
    """Map field paths to 1-based YAML line numbers so errors can point at the line."""
    try:
        loader, root = _compose(text)
    except yaml.YAMLError:
        return {}
    loader.dispose()
    return _lines_of(root)


def _lines_of(root: yaml.Node | None) -> dict[tuple, int]:
    """Field path -> line of a composed document (aliases are bounded by the loader, so following
    them is too)."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    continue  # a collection as a key: validation refuses it, no line to map
                key = k.value
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    if root is not None:
        walk(root, ())
    return lines
