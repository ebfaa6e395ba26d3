"""maskspec_fast: fast MaskSpec (masked spectrogram prediction) pre-training and fine-tuning."""
from . import ops
from .backends import available_backends
from .config import ModelConfig
from .model import Classifier, Model

__version__ = "0.1.0"

__all__ = ["Classifier", "Model", "ModelConfig", "available_backends", "ops", "__version__"]
