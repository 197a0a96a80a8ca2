"""kdlab: experiments on the choice of divergence in knowledge distillation and alignment."""

__version__ = "0.1.0"
