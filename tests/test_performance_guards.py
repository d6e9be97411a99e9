"""Regression guards for step cost: no host round trips, no retracing.

Timings live in bench/step_time.py; these tests pin the properties that
keep the step fast.
"""

import pytest

from conftest import tiny_config, tiny_data
from gradmix_tf.runner import build_runner
from gradmix_tf.batches import batch_indices

HOST_OPS = {"EagerPyFunc", "PyFunc", "PyFuncStateless"}


def _op_types(concrete):
  types = {op.type for op in concrete.graph.get_operations()}
  for function in concrete.graph.as_graph_def().library.function:
    types.update(node.op for node in function.node_def)
  return types


def _trainer(tmp_path, **overrides):
  trainer = build_runner(tiny_config(**overrides), tiny_data(), str(tmp_path))
  data = trainer.data
  streams = [batch_indices(len(s.y), 8, [0, i], 0, 6)
             for i, s in enumerate(data.sources)]
  return trainer, streams


@pytest.mark.parametrize("solver,expect_host", [("exact", False),
                                                ("slsqp", True)])
def test_exact_step_has_no_host_round_trip(tmp_path, solver, expect_host):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  trainer, streams = _trainer(tmp_path, solver=solver)
  fn = trainer.step_functions[0]
  concrete = fn.get_concrete_function(
      tuple(tf.constant(s[0]) for s in streams))
  assert bool(_op_types(concrete) & HOST_OPS) == expect_host


@pytest.mark.parametrize("method", ["gradmix", "source_only", "joint"])
def test_steps_do_not_retrace(tmp_path, method):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  trainer, streams = _trainer(tmp_path, method=method)
  fn = trainer.step_functions[0]
  for row in range(6):
    fn(tuple(tf.constant(s[row]) for s in streams))
  assert fn.experimental_get_tracing_count() == 1
