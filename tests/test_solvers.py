"""The weight solvers against brute force, scipy NNLS and closed forms."""

import numpy as np
import pytest
import scipy.optimize

from conftest import cosine_of_mix
from gradmix_tf import solvers


def _gram_form(grads, v):
  grads = np.asarray(grads, np.float64)
  return grads @ grads.T, grads @ np.asarray(v, np.float64)


def _solve(grads, v, solver):
  gram, cross = _gram_form(grads, v)
  return solvers.solve_mix_weights(gram[None], cross[None], solver).numpy()[0]


def _random_case(rng, k, n=9):
  return rng.normal(size=(k, n)), rng.normal(size=n)


def _degenerate_cases():
  rng = np.random.default_rng(1)
  g, v = rng.normal(size=(3, 6)), rng.normal(size=6)
  yield "duplicate sources", np.stack([g[0], g[0], g[1]]), v
  yield "zero source", np.stack([g[0], np.zeros(6), g[1]]), v
  yield "opposed sources", np.stack([v + 0.1 * g[0], -v]), v
  yield "all opposed", np.stack([-v + 0.3 * g[0], -v + 0.2 * g[1]]), v
  yield "k = 1", g[:1], v
  yield "k = 1 opposed", -v[None] + 0.1 * g[:1], v
  yield "scaled duplicate", np.stack([g[0], 3.0 * g[0]]), v
  yield "tiny magnitudes", 1e-7 * g, 1e-6 * v


@pytest.mark.parametrize("seed", range(6))
def test_exact_matches_slsqp_and_beats_brute_force_on_random_cases(seed):
  rng = np.random.default_rng(seed)
  for k in (1, 2, 3, 4, 5):
    grads, v = _random_case(rng, k)
    exact = cosine_of_mix(grads, v, _solve(grads, v, "exact"))
    slsqp = cosine_of_mix(grads, v, _solve(grads, v, "slsqp"))
    assert exact == pytest.approx(slsqp, abs=1e-6)
    samples = rng.dirichlet(np.ones(k), size=4000)
    brute = max(cosine_of_mix(grads, v, w) for w in samples)
    assert exact >= brute - 1e-9


@pytest.mark.parametrize("name,grads,v", list(_degenerate_cases()))
def test_exact_matches_slsqp_on_degenerate_cases(name, grads, v):
  exact_w = _solve(grads, v, "exact")
  slsqp_w = _solve(grads, v, "slsqp")
  for w in (exact_w, slsqp_w):
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-6), name
  exact = cosine_of_mix(grads, v, exact_w)
  assert exact == pytest.approx(cosine_of_mix(grads, v, slsqp_w), abs=1e-6)
  # Every vertex and a grid of mixtures is no better.
  k = len(grads)
  grid = [np.eye(k)[i] for i in range(k)]
  grid += list(np.random.default_rng(0).dirichlet(np.ones(k), size=2000))
  assert exact >= max(cosine_of_mix(grads, v, w) for w in grid) - 1e-6, name


def test_projection_equals_scipy_nnls():
  rng = np.random.default_rng(3)
  for _ in range(20):
    grads, v = _random_case(rng, 4, n=12)
    nnls, _ = scipy.optimize.nnls(grads.T, v)
    if nnls.sum() == 0:
      continue
    np.testing.assert_allclose(_solve(grads, v, "exact"), nnls / nnls.sum(),
                               atol=1e-5)


def test_hand_computed_two_dimensional_case():
  # g1 = (1, 0), g2 = (0, 1), v = (1, 2): the cone is the first quadrant,
  # v lies in it, so G w = v exactly with w = (1, 2) -> w~ = (1/3, 2/3).
  w = _solve([[1.0, 0.0], [0.0, 1.0]], [1.0, 2.0], "exact")
  np.testing.assert_allclose(w, [1 / 3, 2 / 3], atol=1e-6)
  # v = (1, -1): projection on the quadrant is (1, 0) -> all weight on g1.
  w = _solve([[1.0, 0.0], [0.0, 1.0]], [1.0, -1.0], "exact")
  np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-6)
  # v = (-1, -2): nothing in the cone points along v; cosines are 0 - 1/sqrt5
  # for g1 and -2/sqrt5 for g2, so the best single source is g1.
  w = _solve([[1.0, 0.0], [0.0, 1.0]], [-1.0, -2.0], "exact")
  np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-6)


def test_degenerate_layers_get_uniform_weights():
  gram = np.zeros((2, 3, 3))
  gram[1] = np.eye(3)
  cross = np.zeros((2, 3))  # v = 0 in layer 1; all g = 0 in layer 0
  for solver in solvers.SOLVERS:
    np.testing.assert_allclose(
        solvers.solve_mix_weights(gram, cross, solver).numpy(),
        np.full((2, 3), 1 / 3), atol=1e-7)
  cosines = solvers.mixed_cosine(gram, cross, np.zeros(2), np.full((2, 3),
                                                                   1 / 3))
  np.testing.assert_array_equal(cosines.numpy(), [0.0, 0.0])


def test_meta_sgd_is_normalised_positive_part_of_cross():
  cross = np.array([[2.0, -1.0, 6.0], [-1.0, -2.0, -3.0]])
  w = solvers.solve_mix_weights(np.tile(np.eye(3), (2, 1, 1)), cross,
                                "meta_sgd").numpy()
  # max(0, (2, -1, 6)) / 8 = (0.25, 0, 0.75); all negative -> uniform.
  np.testing.assert_allclose(w, [[0.25, 0.0, 0.75], [1 / 3, 1 / 3, 1 / 3]],
                             atol=1e-7)


def test_many_sources_use_the_active_set_and_agree_with_nnls():
  rng = np.random.default_rng(5)
  k = solvers.MAX_ENUMERATED_SOURCES + 3
  grads = rng.normal(size=(k, 20))
  v = grads[:4].T @ np.array([1.0, 0.5, 2.0, 0.2]) + 0.3 * rng.normal(size=20)
  w = _solve(grads, v, "exact")
  nnls, _ = scipy.optimize.nnls(grads.T, v)
  assert cosine_of_mix(grads, v, w) == pytest.approx(
      cosine_of_mix(grads, v, nnls), abs=1e-6)


def test_batched_layers_are_solved_independently():
  rng = np.random.default_rng(7)
  cases = [_random_case(rng, 3) for _ in range(5)]
  gram = np.stack([_gram_form(g, v)[0] for g, v in cases])
  cross = np.stack([_gram_form(g, v)[1] for g, v in cases])
  batched = solvers.solve_mix_weights(gram, cross).numpy()
  for layer, (g, v) in enumerate(cases):
    np.testing.assert_allclose(batched[layer], _solve(g, v, "exact"),
                               atol=1e-6)


def test_gram_statistics_match_flattened_layers():
  rng = np.random.default_rng(2)
  # One layer of two variables (kernel 2x3, bias 3), two sources.
  src = [[rng.normal(size=(2, 3)), rng.normal(size=3)] for _ in range(2)]
  val = [rng.normal(size=(2, 3)), rng.normal(size=3)]
  flat = np.stack([np.concatenate([a.ravel(), b]) for a, b in src])
  v = np.concatenate([val[0].ravel(), val[1]])
  gram, cross, v_sq = solvers.gram_statistics(
      [[[np.float32(a), np.float32(b)] for a, b in src]],
      [[np.float32(val[0]), np.float32(val[1])]])
  np.testing.assert_allclose(gram.numpy()[0], flat @ flat.T, rtol=1e-5)
  np.testing.assert_allclose(cross.numpy()[0], flat @ v, rtol=1e-5)
  assert v_sq.numpy()[0] == pytest.approx(v @ v, rel=1e-5)


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="Unknown GradMix solver"):
    solvers.solve_mix_weights(np.eye(2)[None], np.ones((1, 2)), "adam")
  with pytest.raises(ValueError, match="expects gram"):
    solvers.solve_mix_weights(np.eye(2), np.ones(2))


@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_non_finite_inputs_do_not_raise(solver):
  gram = np.array([[[np.nan, 0.0], [0.0, 1.0]]])
  cross = np.array([[np.nan, 1.0]])
  weights = solvers.solve_mix_weights(gram, cross, solver)
  assert weights.shape == (1, 2)


@pytest.mark.parametrize("k", [3, solvers.MAX_ENUMERATED_SOURCES + 2])
def test_exact_solver_compiles_under_xla(k):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(k)
  grads = rng.normal(size=(4, k, 15))
  v = rng.normal(size=(4, 15))
  gram = np.einsum("lkn,ljn->lkj", grads, grads)
  cross = np.einsum("lkn,ln->lk", grads, v)
  compiled = tf.function(lambda g, c: solvers.solve_mix_weights(g, c),
                         jit_compile=True)
  np.testing.assert_allclose(compiled(gram, cross).numpy(),
                             solvers.solve_mix_weights(gram, cross).numpy(),
                             atol=1e-5)


@pytest.mark.parametrize("k", [2, 5, solvers.MAX_ENUMERATED_SOURCES + 1])
def test_compiled_exact_solve_equals_the_plain_graph(k):
  rng = np.random.default_rng(10 + k)
  grads = rng.normal(size=(6, k, 12))
  v = rng.normal(size=(6, 12))
  gram = np.einsum("lkn,ljn->lkj", grads, grads)
  cross = np.einsum("lkn,ln->lk", grads, v)
  np.testing.assert_allclose(
      solvers.solve_mix_weights(gram, cross).numpy(),
      solvers._solve_exact(gram, cross).numpy(), atol=1e-6)


@pytest.mark.parametrize("k", [3, 4, 8, 12])
def test_nearly_collinear_sources(k):
  """Gradients almost parallel: the Gram matrix is close to singular."""
  rng = np.random.default_rng(k)
  base = rng.normal(size=12)
  grads = base + 1e-3 * rng.normal(size=(k, 12))
  grads[0] = -base + 0.1 * rng.normal(size=12)
  v = base + 0.5 * rng.normal(size=12)
  exact = cosine_of_mix(grads, v, _solve(grads, v, "exact"))
  nnls, _ = scipy.optimize.nnls(grads.T, v)
  assert exact == pytest.approx(cosine_of_mix(grads, v, nnls), abs=1e-6)
  assert exact == pytest.approx(
      cosine_of_mix(grads, v, _solve(grads, v, "slsqp")), abs=1e-6)


@pytest.mark.parametrize("k", [4, 6, 8])
def test_active_set_equals_enumeration(k):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(20 + k)
  grads = rng.normal(size=(12, k, 10))
  grads[0, 1] = grads[0, 2]             # duplicate sources in one layer
  grads[1, 0] = 0.0                     # a zero source in another
  v = np.einsum("lkn,lk->ln", grads, rng.uniform(-1, 1, (12, k)))
  v += 0.3 * rng.normal(size=v.shape)
  gram = tf.constant(np.einsum("lkn,ljn->lkj", grads, grads))
  cross = tf.constant(np.einsum("lkn,ln->lk", grads, v))
  a_hat, b_hat, scale, active = solvers._unit_diagonal_form(gram, cross)
  by_enumeration = solvers._nnls_by_enumeration(a_hat, b_hat, active, k)
  by_active_set = solvers._nnls_by_active_set(a_hat, b_hat, active, k)
  for layer in range(12):
    weights = [(u * scale[layer]).numpy() for u in (by_enumeration[layer],
                                                    by_active_set[layer])]
    cosines = [cosine_of_mix(grads[layer], v[layer], w) for w in weights]
    assert cosines[1] == pytest.approx(cosines[0], abs=1e-9)
