"""IA2: ICL Activation Alignment for few-shot adapters."""

__version__ = "0.1.0"
