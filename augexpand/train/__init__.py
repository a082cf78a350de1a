"""Fine-tuning and evaluation of image classifiers on an expanded dataset (needs the ``train`` extra: torch)."""
