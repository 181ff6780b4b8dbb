"""Small models the book trains and measures: a tiny Llama-style LM and its offline corpus."""
from quantlib.models.digits import (
    DigitsData,
    accuracy,
    digits_mlp,
    load_digits_data,
    train_classifier,
    train_digits_mlp,
)
from quantlib.models.minilm import (
    CALIBRATION_SENTENCES,
    SENTENCES,
    embed,
    embedding_agreement,
    load_minilm,
    tokenize,
)
from quantlib.models.tinylm import TinyLM, TinyLMConfig, evaluate, get_batch, load_corpus, train

__all__ = [
    "CALIBRATION_SENTENCES", "SENTENCES", "DigitsData", "TinyLM", "TinyLMConfig", "accuracy",
    "digits_mlp", "embed", "embedding_agreement", "evaluate", "get_batch", "load_corpus",
    "load_digits_data", "load_minilm", "tokenize", "train", "train_classifier", "train_digits_mlp",
]
