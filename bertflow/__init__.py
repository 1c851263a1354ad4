"""bertflow: embedding datasets from text collections with BERT-family encoders."""

__version__ = "0.3.0"
