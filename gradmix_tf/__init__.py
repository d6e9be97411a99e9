"""gradmix_tf: multi-source transfer across domains and tasks with GradMix.

    import gradmix_tf
    optimizer = gradmix_tf.GradMix(keras.optimizers.SGD(0.05, momentum=0.9))
    weights = gradmix_tf.solve_mix_weights(gram, cross, solver="exact")
"""

from gradmix_tf.errors import ConfigError, DataError, TrainingError, UserError
from gradmix_tf.models import MultiHeadClassifier, build_model
from gradmix_tf.gradmf import GradMF
from gradmix_tf.optimizer import GradMix
from gradmix_tf.solvers import gram_statistics, mixed_cosine, solve_mix_weights
from gradmix_tf.trainer import METHODS, Trainer
from gradmix_tf.holistic import HolisticTrainer
from gradmix_tf import data

__version__ = "0.1.0"
