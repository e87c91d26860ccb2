"""A patch that marks the lines of the named functions of a module as added, for
`mutmut run --use-patch-file` (scripts/mutate.sh ONLY): mutate part of a module.

    python scripts/mutate_lines.py registry/grpc/gate.py _bearer CallGate._permit > lines.patch
"""

from __future__ import annotations

import ast
import difflib
import sys


def line_ranges(source: str, names: set[str]) -> dict[str, tuple[int, int]]:
    """(first, last) line of each named function or class, methods as Class.method."""
    found: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                if name in names:
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    found[name] = (first, child.end_lineno or child.lineno)
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{name}.")

    visit(ast.parse(source), "")
    return found


def main() -> None:
    path, names = sys.argv[1], set(sys.argv[2:])
    with open(path, encoding="utf-8") as f:
        source = f.read()
    ranges = line_ranges(source, names)
    if missing := names - set(ranges):
        sys.exit(f"not in {path}: {', '.join(sorted(missing))}")
    chosen = {n for first, last in ranges.values() for n in range(first, last + 1)}
    lines = source.splitlines(keepends=True)
    unchanged = [line for number, line in enumerate(lines, 1) if number not in chosen]
    sys.stdout.writelines(difflib.unified_diff(unchanged, lines, f"a/{path}", f"b/{path}"))
    print(f"{path}: {len(chosen)} lines of {len(ranges)} functions", file=sys.stderr)


if __name__ == "__main__":
    main()
