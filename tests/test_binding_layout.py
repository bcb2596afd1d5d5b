"""The binding's modules depend on each other one way only: no import cycle among
`crates/gpt-rs-py/src/*.rs` (each `crate::<module>` a file names is an edge)."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "crates" / "gpt-rs-py" / "src"


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = {p.stem for p in src.glob("*.rs")} - {"lib"}
    graph = {}
    for m in modules:
        text = (src / f"{m}.rs").read_text()
        text = re.sub(r"//.*", "", text)  # comments may name modules freely
        used = set(re.findall(r"crate::(\w+)", text))
        # `use crate::{a, b::c}` groups
        for group in re.findall(r"use crate::\{([^}]*)\}", text):
            used |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        graph[m] = (used & modules) - {m}
    return graph


def find_cycle(graph: dict[str, set[str]]):
    """A dependency cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle_among_binding_modules():
    graph = module_graph()
    assert {"convert", "tensor", "dlpack", "functional"} <= graph.keys()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    # The leaf every tensor-handling module builds on depends on no other module but errors.
    assert graph["convert"] <= {"errors"}


def test_the_checker_finds_a_cycle(tmp_path):
    (tmp_path / "a.rs").write_text("use crate::b::x;\n")
    (tmp_path / "b.rs").write_text("use crate::{c, errors};\n")
    (tmp_path / "c.rs").write_text("fn f() { crate::a::g() }\n// crate::zzz\n")
    (tmp_path / "errors.rs").write_text("")
    graph = module_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"c", "errors"}, "c": {"a"}, "errors": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
