"""Rewriting a traced network: the methods that rebuild it with their own neurons, encoders and
read-outs install modules on its nodes and edges."""

from __future__ import annotations

import torch.fx as fx
from torch import nn


def set_module(gm: fx.GraphModule, node: fx.Node, target: str, module: nn.Module) -> None:
    """Make ``node`` a call of ``module``, installed at ``target`` (created or replaced), with the
    node's own arguments (a function call such as ``F.relu(x)`` becomes a module call)."""
    install(gm, target, module)
    if node.op != "call_module" or node.target != target:
        args = node.args[:1]
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, args)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


def insert_after(gm: fx.GraphModule, node: fx.Node, target: str, module: nn.Module) -> fx.Node:
    """Insert a call of ``module`` (installed at ``target``) on ``node``'s output, before its users."""
    install(gm, target, module)
    users = list(node.users)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(target, (node,))
    for u in users:
        u.replace_input_with(node, new)
    return new


def install(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Set the submodule at dotted path ``target``, creating empty parent modules as needed."""
    owner: nn.Module = gm
    *parents, attr = target.split(".")
    for p in parents:
        if not hasattr(owner, p):
            owner.add_module(p, nn.Module())
        owner = getattr(owner, p)
    setattr(owner, attr, module)


def free_target(gm: fx.GraphModule, wanted: str) -> str:
    """``wanted`` if no submodule or attribute has that path yet, else ``wanted_1``, ``wanted_2`` ..."""
    def taken(path: str) -> bool:
        parent, _, attr = path.rpartition(".")
        try:
            owner = gm.get_submodule(parent) if parent else gm
        except AttributeError:
            return False
        return hasattr(owner, attr)
    name, k = wanted, 0
    while taken(name):
        k += 1
        name = f"{wanted}_{k}"
    return name


def insert_after_edge(gm: fx.GraphModule, src: fx.Node, user: fx.Node, target: str, module: nn.Module) -> fx.Node:
    """Insert a call of ``module`` on the edge ``src`` → ``user`` only (installed at a free target
    named after ``target``)."""
    target = free_target(gm, target)
    install(gm, target, module)
    with gm.graph.inserting_before(user):
        new = gm.graph.call_module(target, (src,))
    user.replace_input_with(src, new)
    return new
