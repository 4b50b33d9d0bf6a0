"""hf-dwakd: cross-tokenizer knowledge distillation (DWA-KD) as a TRL trainer."""

__version__ = "0.1.0"
