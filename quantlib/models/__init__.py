"""Small models the book trains and measures: a tiny Llama-style LM and its offline corpus."""
from quantlib.models.tinylm import TinyLM, TinyLMConfig, load_corpus, get_batch, train, evaluate
from quantlib.models.digits import (DigitsData, load_digits_data, digits_mlp, accuracy,
                                    train_classifier, train_digits_mlp)
from quantlib.models.minilm import (SENTENCES, CALIBRATION_SENTENCES, load_minilm, tokenize, embed,
                                    embedding_agreement)
