"""SimCLR pretraining: encoders, projection heads, NT-Xent, augmentations, data and the training loop.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
"""

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)
