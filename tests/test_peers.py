"""The peer corpus (examples/peers/): rewrites taken from other systems, written in our language.

Every rewrite names its source and says whether today's language expresses it, and whether the
language before issue 13's extension did; every file's test
blocks pass; and every test block keeps the numbers: TensorFlow (and the numpy evaluator, where it
has every kernel) runs the given graph and the rewritten one on the same inputs.
"""
from __future__ import annotations

import collections
import pathlib
import re

import numpy as np
import pytest

from gtt_rules import standard_library
from gtt_rules.engine.dtypes import numpy_dtype
from gtt_rules.engine.evaluator import evaluate
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.kernels import load_all
from gtt_rules.grammar import ast
from gtt_rules.rules.fixtures import _stage_call, build_graph, run_file

PEERS = pathlib.Path(__file__).resolve().parent.parent / "examples" / "peers"
FILES = sorted(PEERS.glob("*.rules"))
PEER = re.compile(r"^# peer: (?P<name>\S+) — (?P<repo>[\w.-]+/[\w.-]+) (?P<path>\S+)")
EXPRESSIBLE = re.compile(r"^# expressible: (yes|with workaround — \S.*|no — needs \S.*)$")
BEFORE = re.compile(r"^# expressible before: (yes|with workaround|no)$")
STATUS = {"yes": "yes", "with": "workaround", "no": "no"}


def expressible_line(lines: list[str], start: int) -> str:
    """The `# expressible:` statement at lines[start], with its continuation lines (`#   ...`)."""
    text = lines[start]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        text += " " + line[4:].strip()
    return text


def peer_blocks(path: pathlib.Path) -> list[dict]:
    """Each `# peer:` comment starts a rewrite; the `# expressible:` statement after it says
    whether today's language expresses it, the `# expressible before:` line whether the first
    corpus's language did, and the rules up to the next `# peer:` (in a rule set too) are its."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines() + [""]
    for number, line in enumerate(lines):
        found = PEER.match(line)
        if found:
            statement = expressible_line(lines, number + 1)
            status = EXPRESSIBLE.match(statement)
            blocks.append({"name": found["name"], "repo": found["repo"], "path": found["path"],
                           "line": number + 1, "rules": [],
                           "expressible": STATUS[status.group(1).split()[0]] if status else None,
                           "need": statement.split("— ", 1)[1] if status and "— " in statement else "",
                           "before": None})
        elif BEFORE.match(line) and blocks and not blocks[-1]["rules"]:
            blocks[-1]["before"] = STATUS[BEFORE.match(line).group(1).split()[0]]
        elif line.lstrip().startswith("rule ") and blocks:
            blocks[-1]["rules"].append(line.split()[1].rstrip(":"))
        elif line.lstrip().startswith("rule "):
            blocks.append({"name": None, "repo": None, "path": None, "line": number + 1,
                           "rules": [line.split()[1].rstrip(":")], "expressible": None, "need": "",
                           "before": None})
    return blocks


BLOCKS = [(path.name, block) for path in FILES for block in peer_blocks(path)]


def test_the_corpus_has_thirty_rewrites_from_five_systems():
    assert len(BLOCKS) >= 30
    assert len({block["repo"] for _, block in BLOCKS}) >= 5


@pytest.mark.parametrize("name, block", BLOCKS, ids=[f"{n}:{b['line']}" for n, b in BLOCKS])
def test_every_rewrite_names_its_source_and_says_if_it_is_expressible(name, block):
    assert block["name"], f"{name}:{block['line']}: rule {block['rules']} has no '# peer:' comment above it"
    assert block["expressible"], f"{name}:{block['line']}: no '# expressible:' line after '# peer:'"
    assert block["before"], f"{name}:{block['line']}: no '# expressible before:' line before its rules"
    assert block["rules"], f"{name}:{block['line']}: the rewrite has no rule"


def test_the_readme_table_lists_every_rewrite_as_the_files_do():
    """The README's table is the files' `# peer:`, `# expressible before:` and `# expressible:`
    lines, row for row; when a rewrite changes, the failure shows the rows to paste. The counts
    are the files' too, before and now."""
    readme = (PEERS / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `") and ".rules` |" in line]
    expected = [f"| `{b['name']}` | {b['repo']} `{b['path']}` | `{name}` | {b['before']} | {b['expressible']} "
                f"| {b['need']} |" for name, b in BLOCKS]
    assert rows == expected, "README.md's table should read:\n" + "\n".join(expected)
    rules = sum(len(block["rules"]) for _, block in BLOCKS)
    for when, key in (("before", "before"), ("now", "expressible")):
        status = collections.Counter(block[key] for _, block in BLOCKS)
        counts = (f"{when}: {status['yes']} expressible as written, {status['workaround']} with a "
                  f"workaround, {status['no']} not")
        assert counts in " ".join(readme.split()), f"README.md's counts should read: {counts}"
    total = f"{len(BLOCKS)} rewrites ({rules} rules) from {len(FILES)} files"
    assert total in " ".join(readme.split()), f"README.md's counts should read: {total}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_the_test_blocks_pass(path):
    results = run_file(path, standard_library())
    assert results, f"{path.name} has no test block"
    failed = [f"{r.location} {r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)


def _test_blocks():
    library = standard_library()
    cases = []
    for path in FILES:
        compiled = library.load_file(path)
        cases += [(path, test, owner) for test, owner in compiled.tests]
    return cases


CASES = _test_blocks()


def _feeds(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for every Placeholder; those named pos* get values in [0.5, 2] (or [1, 9])."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for node in graph.placeholders():
        dtype = np.dtype(numpy_dtype(node.get_attr("dtype")))
        shape = [d if d >= 0 else 2 for d in node.get_attr("shape", [])]
        positive = node.name.startswith("pos")
        if dtype.kind == "f":
            value = rng.uniform(0.5, 2.0, shape) if positive else rng.standard_normal(shape) * 3
        elif dtype.kind in "iu":
            value = rng.integers(1, 10, shape) if positive else rng.integers(-20, 21, shape)
        else:
            value = rng.integers(0, 2, shape)
        feeds[node.name] = np.asarray(value).astype(dtype)
    return feeds


def tf_run_as_written(graph: Graph, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    """TensorFlow runs the graph as it is: Grappler off, since it applies these very rewrites (and
    TF 2.21's ConvertPowStage drops a broadcast: pow(x[1, 3], full([2, 3], 2.0)) gives [1, 3])."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    with tf.Graph().as_default() as tf_graph:
        tf.graph_util.import_graph_def(tf.compat.v1.GraphDef.FromString(graph.to_bytes()), name="")
        with tf.compat.v1.Session(graph=tf_graph, config=config) as session:
            return session.run([f"{o}:0" for o in outputs], {f"{k}:0": v for k, v in feeds.items()})


def _evaluable(graph: Graph) -> bool:
    kernels = load_all()
    return all(node.op in kernels for node in graph)


def rewrite(path: pathlib.Path, test: ast.Test, owner: str):
    """A test block's given graph, the graph its rules make of it, its outputs, and the fires."""
    library = standard_library()
    library.load_file(path)
    module = ast.Module(str(path), path.read_text(encoding="utf-8"))
    given = build_graph(test.given, module)
    outputs = list(test.outputs) or [n.name for n in given.sinks()]
    inputs = [n.name for n in given.placeholders()]
    rewritten = Graph.from_bytes(given.to_bytes())
    fires = collections.Counter()
    for stage in library.call(_stage_call(test, owner, module)):
        fires.update(stage.run(rewritten, inputs=inputs, outputs=outputs).fires)
    return given, rewritten, outputs, fires


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_rule_fires_in_some_test_block(path):
    fires = collections.Counter()
    for case_path, test, owner in CASES:
        if case_path == path:
            fires.update(rewrite(case_path, test, owner)[3])
    rules = [rule for name, block in BLOCKS if name == path.name for rule in block["rules"]]
    never = [rule for rule in rules if not fires[rule]]
    assert not never, f"{path.name}: no test block fires {', '.join(never)}"


@pytest.mark.parametrize("path, test, owner", CASES, ids=[f"{p.name}:{t.name}" for p, t, _ in CASES])
def test_the_rewritten_graph_computes_what_the_given_one_does(path, test, owner):
    given, rewritten, outputs, _ = rewrite(path, test, owner)
    feeds = _feeds(given, seed=0)
    expected = tf_run_as_written(given, feeds, outputs)
    checks = [("TensorFlow", tf_run_as_written(rewritten, feeds, outputs))]
    if _evaluable(given) and _evaluable(rewritten):
        checks.append(("the evaluator", evaluate(rewritten, feeds, outputs)))
        # The evaluator agrees with TensorFlow on the graph as given, too.
        checks.append(("the evaluator on the given graph", evaluate(given, feeds, outputs)))
    for who, values in checks:
        for name, want, got in zip(outputs, expected, values):
            if want.dtype.name == "bfloat16" and got.dtype == np.float32:
                want = want.astype(np.float32)   # the evaluator holds bfloat16 as float32
            assert got.dtype == want.dtype and got.shape == want.shape, f"{who}: {name}"
            if want.dtype.kind in "fc":
                # Rewrites that reorder float arithmetic change the last bits, as in their sources.
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5, equal_nan=True,
                                           err_msg=f"{who}: {name}")
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{who}: {name}")
