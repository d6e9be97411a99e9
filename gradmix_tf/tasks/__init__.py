"""The method families, one `gradmix_tf.task.Task` subclass each.

=====================  ======================================================
module                 methods
=====================  ======================================================
``multi_source``       target_only, source_only, fine_tune, joint, gradmix,
                       gradmix_no_adalr, gradmix_sgd, gradmf, gradmix_vat,
                       gradmix_mixmatch (the paper's methods)
``mme``                mme (baseline)
``mdda``               mdda (baseline; digit ConvNet or ResNet-18)
``dctn``               dctn (baseline)
``holistic``           the holistic-transfer methods
=====================  ======================================================

`gradmix_tf/methods.py` registers each method; `gradmix_tf/runner.py`
runs any of them.
"""
