"""Digit datasets, MNIST-M, and the source / target splits of an experiment."""

from gradmix_tf.data.digits import DigitDataset
from gradmix_tf.data.specs import load_dataset
from gradmix_tf.data.experiment import ExperimentData, SourceData, build_experiment
from gradmix_tf.data.mnistm import blend_with_backgrounds
