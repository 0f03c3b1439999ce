"""One report tree, two renderings: ``nvidia-smi -q -x`` (XML) and ``nvidia-smi -q`` (text).

The real tool prints the same facts in both forms, with a few differences in shape (text-only
groupings, XML-only lists, different number formats). A Node carries both names so the
sections are written once: ``tag`` is the XML element (None: text only), ``label`` the text
label (None: XML only), ``tvalue`` a text rendering that differs from the XML one.
"""

from __future__ import annotations

import typing as t
from xml.sax.saxutils import escape, quoteattr

TEXT_COLUMN = 55  # the text report aligns every ':' in this column
TEXT_INDENT = "    "


class Node:
    """An element of the report: a leaf value or a section of child nodes."""

    __slots__ = ("tag", "label", "value", "tvalue", "children", "attrs", "block")

    def __init__(
        self,
        tag: str | None,
        label: str | None,
        value: str | None = None,
        children: t.Sequence[Node] | None = None,
        tvalue: str | None = None,
        attrs: dict[str, str] | None = None,
        block: bool = False,
    ) -> None:
        self.tag = tag
        self.label = label
        self.value = value
        self.children = list(children) if children is not None else None
        self.tvalue = tvalue
        self.attrs = attrs or {}
        self.block = block


def leaf(tag: str | None, label: str | None, value: str, tvalue: str | None = None) -> Node:
    """A value shown in both forms (or one of them, when tag or label is None)."""
    return Node(tag, label, value=value, tvalue=tvalue)


def section(tag: str | None, label: str | None, children: t.Sequence[Node], **kwargs: t.Any) -> Node:
    """A group of nodes."""
    return Node(tag, label, children=children, **kwargs)


def render_xml(node: Node, depth: int, out: list[str]) -> None:
    """Append the XML lines of ``node`` (tab-indented, as nvidia-smi writes them)."""
    if node.tag is None:
        return
    pad = "\t" * depth
    attrs = "".join(f" {name}={quoteattr(value)}" for name, value in node.attrs.items())
    if node.children is not None:
        out.append(f"{pad}<{node.tag}{attrs}>")
        for child in node.children:
            render_xml(child, depth + 1, out)
        out.append(f"{pad}</{node.tag}>")
    elif node.block:
        out.append(f"{pad}<{node.tag}{attrs}>")
        out.append(f"{pad}\t{escape(node.value or '')}")
        out.append(f"{pad}</{node.tag}>")
    else:
        out.append(f"{pad}<{node.tag}{attrs}>{escape(node.value or '')}</{node.tag}>")


def render_text(node: Node, depth: int, out: list[str]) -> None:
    """Append the text lines of ``node`` (four-space indents, values in one column)."""
    if node.label is None:
        return
    pad = TEXT_INDENT * depth
    value = node.tvalue if node.tvalue is not None else node.value
    if value is not None:
        out.append(f"{pad}{node.label}".ljust(TEXT_COLUMN) + ": " + value)
    else:
        out.append(f"{pad}{node.label}")
    for child in node.children or ():
        render_text(child, depth + 1, out)
