"""Installs gradmix_tf: `pip install -e ".[test]"`."""

import setuptools

setuptools.setup(
    name="gradmix_tf",
    version="0.1.0",
    description=("GradMix (WACV 2020): multi-source transfer across domains "
                 "and tasks, in TensorFlow 2 / Keras 3."),
    packages=setuptools.find_packages(include=["gradmix_tf", "gradmix_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",        # Keras 3
        "keras>=3.0",
        "tensorboard",             # tf.summary; TF 2.21 no longer pulls it in
        "tensorflow-datasets",
        "importlib_resources",     # needed by tensorflow-datasets, undeclared
        "scipy",
        "numpy",
        "absl-py",
        "ml-collections",
        "matplotlib",              # plots; FreeType and fonts of syndigits
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist"],
        "bench": [],
    },
)
