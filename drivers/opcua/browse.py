"""Walking a server's address space, for `edge-agent browse`: a tree a technician reads, and a
tag list the configuration takes as it is.

Browse and Read only (read-only towards the PLC). The standard `Server` object is not
descended into unless asked for (`--node i=2253`): it holds hundreds of diagnostics nodes
that bury the machine's own variables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.uaerrors import UaError

from drivers.opcua.config import OpcUaTag

SERVER_OBJECT = "i=2253"
MAX_CHILDREN = 500
"""Children shown per node: a folder of thousands of nodes is summarised, not printed."""
_VALUE_TEXT = 60


@dataclass
class BrowsedNode:
    node_id: str
    browse_name: str
    """`ns:Name`, as `browse_path` takes it."""
    node_class: str
    data_type: str | None = None
    value: object = None
    status: str | None = None
    children: list[BrowsedNode] = field(default_factory=list)
    more: int = 0
    """Children not walked (depth or count limit, or the Server object)."""


async def browse_tree(client: Client, start: str, depth: int) -> BrowsedNode:
    """The tree under `start`, `depth` levels deep (0: the node alone)."""
    return await _walk(client, client.get_node(start), depth, top=True)


async def _walk(client: Client, node: Node, depth: int, *, top: bool = False) -> BrowsedNode:
    name = await node.read_browse_name()
    node_class = await node.read_node_class()
    item = BrowsedNode(node.nodeid.to_string(), f"{name.NamespaceIndex}:{name.Name}",
                       node_class.name)
    if node_class.name == "Variable":
        await _read_variable(client, node, item)
    if item.node_id == SERVER_OBJECT and not top:
        item.more = -1  # not walked on purpose
        return item
    if depth <= 0:
        item.more = len(await node.get_children())
        return item
    children = await node.get_children()
    for child in children[:MAX_CHILDREN]:
        item.children.append(await _walk(client, child, depth - 1))
    item.more = max(0, len(children) - MAX_CHILDREN)
    return item


async def _read_variable(client: Client, node: Node, item: BrowsedNode) -> None:
    try:
        value = await node.read_data_value(raise_on_bad_status=False)
        item.value = value.Value.Value if value.Value is not None else None
        item.status = value.StatusCode.name if value.StatusCode is not None else None
        type_id = await node.read_data_type()
        item.data_type = (await client.get_node(type_id).read_browse_name()).Name
    except UaError as exc:  # a node that refuses to be read is shown, not fatal
        item.status = type(exc).__name__


def render_tree(root: BrowsedNode) -> list[str]:
    """Lines of a tree: browse name, NodeId, and for variables the data type and value."""
    lines = [_describe(root)]
    lines += _render_children(root, "")
    return lines


def _render_children(node: BrowsedNode, prefix: str) -> list[str]:
    lines: list[str] = []
    entries: list[BrowsedNode | str] = [*node.children]
    if node.more > 0:
        entries.append(f"... {node.more} more (use --depth or --node {node.node_id})")
    elif node.more < 0:
        entries.append(f"... not shown (browse it with --node {node.node_id})")
    for i, entry in enumerate(entries):
        last = i == len(entries) - 1
        branch, indent = ("└─ ", "   ") if last else ("├─ ", "│  ")
        if isinstance(entry, str):
            lines.append(prefix + branch + entry)
            continue
        lines.append(prefix + branch + _describe(entry))
        lines += _render_children(entry, prefix + indent)
    return lines


def _describe(node: BrowsedNode) -> str:
    text = f"{node.browse_name}  [{node.node_id}]"
    if node.node_class != "Variable":
        return f"{text}  {node.node_class}"
    value = repr(node.value)
    if len(value) > _VALUE_TEXT:
        value = value[: _VALUE_TEXT - 3] + "..."
    status = "" if node.status in (None, "Good") else f"  ({node.status})"
    kind = (f"{node.data_type}[{len(node.value)}]" if isinstance(node.value, list | tuple)
            else node.data_type)
    return f"{text}  {kind} = {value}{status}"


def variables(root: BrowsedNode) -> Iterator[BrowsedNode]:
    if root.node_class == "Variable":
        yield root
    for child in root.children:
        yield from variables(child)


def tag_name(browse_name: str) -> str:
    """A valid tag name from a browse name (`2:Motor Current` -> `Motor_Current`)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", browse_name.split(":", 1)[-1]).strip("_")
    return name if name[:1].isalpha() else f"tag_{name}"


DEFAULT_MAX_ARRAY_LENGTH: int = OpcUaTag.model_fields["max_array_length"].default


def yaml_tags(nodes: Sequence[BrowsedNode]) -> list[str]:
    """A `tags:` list for a device's configuration: subscribed, names unique; an array longer
    than the default `max_array_length` gets its length, or the agent would cut it."""
    lines = ["tags:"]
    used: set[str] = set()
    for node in nodes:
        name = base = tag_name(node.browse_name)
        n = 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        # json.dumps quotes like YAML's double-quoted scalars: NodeIds hold ';' and '='.
        lines += [f"  - name: {name}",
                  f"    node: {json.dumps(node.node_id)}",
                  "    mode: subscribe"]
        length = len(node.value) if isinstance(node.value, list | tuple) else None
        if length is not None and length > DEFAULT_MAX_ARRAY_LENGTH:
            lines.append(f"    max_array_length: {length}")
        if node.data_type:
            kind = node.data_type if length is None else f"{node.data_type}[{length}]"
            lines.append(f"    # {kind}, now {node.value!r}"[:100])
    return lines
