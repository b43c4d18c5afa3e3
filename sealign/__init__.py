"""sealign: sample-efficient online alignment of language models (the SEA paper)."""

__version__ = "0.1.0"
