"""The DAG itself: cycles and the levels a flow runs in.

Both functions take ``deps``: node name → the names of the nodes it reads
(only names that are nodes of the flow), and ``order``: the node names in
file order, so results are stable and read like the file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


def find_cycle(deps: Mapping[str, Collection[str]], order: Sequence[str]) -> list[str] | None:
    """One cycle as ``[a, b, c, a]`` (a reads b's output … c reads a's), or None for a DAG."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(deps.get(name, ()), key=_position(order)):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[name] = 2
        return None

    for name in order:
        if name not in state and (found := visit(name)):
            return found
    return None


def levels(deps: Mapping[str, Collection[str]], order: Sequence[str]) -> list[list[str]]:
    """The nodes in levels: each level's nodes read only earlier levels, so they may run concurrently.

    Level 0 holds the nodes that read only flow inputs. A `ValueError` means a cycle.
    """
    placed: dict[str, int] = {}
    remaining = list(order)
    result: list[list[str]] = []
    while remaining:
        level = [n for n in remaining if all(d in placed for d in deps.get(n, ()))]
        if not level:
            raise ValueError(f"the nodes {remaining} form a cycle")
        for name in level:
            placed[name] = len(result)
        result.append(level)
        remaining = [n for n in remaining if n not in placed]
    return result


def _position(order: Sequence[str]):  # noqa: ANN202 - a sort key
    index = {name: i for i, name in enumerate(order)}
    return lambda name: index.get(name, len(index))
