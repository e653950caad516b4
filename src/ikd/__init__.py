"""ikd: compress convolutional networks by iterative knowledge distillation."""

__version__ = "0.1.0"
