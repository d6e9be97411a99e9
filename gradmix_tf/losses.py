"""Losses every method shares: cross-entropy and prediction entropy."""

import tensorflow as tf


def cross_entropy(labels, logits):
  """Mean cross-entropy of integer `labels` under `logits`."""
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits))


def entropy(probabilities, axis=-1):
  """`-sum_c p_c log p_c` along `axis` (0 log 0 taken as 0)."""
  return -tf.reduce_sum(
      probabilities * tf.math.log(tf.maximum(probabilities, 1e-12)), axis)


def mean_prediction_entropy(logits):
  """`-mean_batch sum_c p_c log p_c` of `p = softmax(logits)`."""
  log_p = tf.nn.log_softmax(logits)
  return -tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * log_p, -1))
