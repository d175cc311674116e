"""The public facade: load rules, apply them to TensorFlow's own GraphDef, evaluate, save."""
from __future__ import annotations

import numpy as np

import gtt_rules
from conftest import fixture_path, fixture_spec, random_feeds, tf_run


def test_facade_round_trip_on_a_tensorflow_message(tf, tmp_path):
    spec = fixture_spec("tf1_mul_fold")
    message = tf.compat.v1.GraphDef.FromString(fixture_path("tf1_mul_fold").read_bytes())
    graph, reports = gtt_rules.apply(message, gtt_rules.load_rules(["batch_norm"]))
    assert [name for name, _ in reports] == ["batch_norm"]
    assert reports[0][1].fires["fold-mul-into-conv"] == 4
    feeds = random_feeds(spec)
    ours = gtt_rules.evaluate(graph, feeds, spec["outputs"])
    theirs = tf_run(message.SerializeToString(), feeds, spec["outputs"])
    for a, e in zip(ours, theirs):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    graph.save(tmp_path / "out.pb")
    assert len(gtt_rules.Graph.load(tmp_path / "out.pb")) == len(graph)


def test_errors_share_one_base_class():
    for error in (gtt_rules.GraphError, gtt_rules.RulesSyntaxError, gtt_rules.RulesCheckError,
                  gtt_rules.RewriteError, gtt_rules.EvaluationError):
        assert issubclass(error, gtt_rules.GttRulesError)
