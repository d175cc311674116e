"""Registries: the functions and passes a Library's rules may call are the ones it is given."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import fixture_graph
import gtt_rules
from gtt_rules import stdlib_rules
from gtt_rules.errors import RulesCheckError, UsageError
from gtt_rules.rules.functions import BUILTINS, register_function
from gtt_rules.rules.library import Library
from gtt_rules.rules.params import Param
from gtt_rules.rules.passes import register_pass
from gtt_rules.rules.registry import REGISTERED, Registry

DOUBLE_RULE = """rule double:
    n = Mul(y, k: Const)
    where value(k)[0] == 1.0
    => n -> Mul(y, Const({function}(value(k))))
"""


def _graph():
    return fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        k = Const([1.0, 2.0])
        m = Mul(x, k) {T: float}
        out = Neg(m) {T: float}
    """)


def _const(graph, name):
    return graph[name].get_attr("value").tolist()


def test_a_composed_registry_looks_in_itself_first_and_sees_later_registrations():
    first, second = Registry(), Registry()
    both = Registry(first, second)
    second.function("f", args=("value",), returns="value")(lambda x: x)
    first.function("f", args=("value", "value"), returns="value")(lambda x, y: x)
    second.pass_("p")(lambda graph, ctx: None)
    assert both.functions["f"].args == ("value", "value")
    assert "p" in both.passes
    both.function("f", returns="bool")(lambda: True)
    assert both.functions["f"].returns == "bool"
    assert first.functions["f"].returns == "value"  # a composed registry writes only into itself


def test_a_library_calls_the_functions_of_its_own_registry_only(tmp_path):
    # As docs/language.md shows: the standard library, and one more function for these rules only.
    mine = Registry(gtt_rules.standard_registry())
    mine.function("test_registry_double", args=("value",), returns="value")(lambda x: np.asarray(x) * 2)
    path = tmp_path / "t.rules"
    path.write_text(DOUBLE_RULE.format(function="test_registry_double"))
    library = Library(mine, stdlib_rules.DIRECTORY)
    (stage,) = library.stages(str(path))
    assert library.stages("fold_constants")
    graph = _graph()
    stage.run(graph, inputs=["x"], outputs=["out"])
    assert _const(graph, "m/double/Const") == [2.0, 4.0]
    for library in (Library(), gtt_rules.standard_library()):
        with pytest.raises(RulesCheckError, match="unknown function 'test_registry_double'"):
            library.stages(str(path))


def test_the_language_alone_has_no_standard_library(tmp_path):
    library = Library()
    assert library.find("cleanup") is None and library.find("strip_unused_nodes") is None
    with pytest.raises(UsageError, match="unknown rule set or pipeline 'fold_constants'"):
        library.stages("fold_constants")
    path = tmp_path / "t.rules"
    path.write_text("import cleanup\nrule r:\n    n = Relu(x)\n    => n -> x\n")
    with pytest.raises(RulesCheckError, match="cannot import 'cleanup': this library has no standard library"):
        library.load_file(path)
    # The standard library's functions are `define`s of its files: a file that calls one imports it.
    stdlib_call = tmp_path / "s.rules"
    stdlib_call.write_text("rule r:\n    n = Relu(x)\n    where eight_bit_broadcast(x, x)\n    => n -> x\n")
    with pytest.raises(RulesCheckError, match="unknown function 'eight_bit_broadcast'"):
        gtt_rules.standard_library().load_file(stdlib_call)
    stdlib_call.write_text("import quantization\n" + stdlib_call.read_text())
    with pytest.raises(RulesCheckError, match="cannot import 'quantization': this library has no standard library"):
        library.load_file(stdlib_call)
    assert gtt_rules.standard_library().load_file(stdlib_call).rulesets["s"].rules


def test_the_standard_registry_is_the_builtins_and_the_stdlibs():
    registry = gtt_rules.standard_registry()
    assert set(BUILTINS.functions) | set(stdlib_rules.REGISTRY.functions) <= set(registry.functions)
    assert set(stdlib_rules.REGISTRY.passes) <= set(registry.passes)
    assert "strip_unused_nodes" in stdlib_rules.REGISTRY.passes
    assert set(stdlib_rules.REGISTRY.functions) == {"channel_vector"}  # the others are rules
    assert "channel_vector" not in BUILTINS.functions
    assert not set(BUILTINS.passes)


@pytest.fixture
def registered():
    """Forget, after the test, what it registered with register_function / register_pass."""
    yield
    for table in (REGISTERED.functions, REGISTERED.passes):
        for name in [name for name in table if name.startswith("test_registry_")]:
            del table[name]


def test_register_function_and_register_pass_reach_the_api(tmp_path, registered):
    @register_function("test_registry_halve", args=("value",), returns="value")
    def halve(x):
        """Half of x (registered by tests/test_registry.py)."""
        return np.asarray(x) / 2

    @register_pass("test_registry_tag", Param("device", "str", False, ""))
    def tag(graph, ctx):
        """Set every node's device (registered by tests/test_registry.py)."""
        for node in graph:
            node.device = ctx.params["device"]

    path = tmp_path / "t.rules"
    path.write_text(DOUBLE_RULE.format(function="test_registry_halve"))
    graph, _ = gtt_rules.apply(_graph(), gtt_rules.load_rules([str(path), 'test_registry_tag(device="/cpu:0")']),
                               inputs=["x"], outputs=["out"])
    assert _const(graph, "m/double/Const") == [0.5, 1.0]
    assert {node.device for node in graph} == {"/cpu:0"}
    assert gtt_rules.standard_registry().functions["test_registry_halve"].doc == \
        "Half of x (registered by tests/test_registry.py)."
