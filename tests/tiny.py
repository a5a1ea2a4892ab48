"""Tiny local models, tokenizers and corpora for fast tests (nothing is downloaded)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import orjson
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) for _ in range(count)]


def tiny_tokenizer(texts: list[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_model(arch: str, vocab_size: int, layers: int = 3, hidden: int = 32, seed: int = 0):
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    configs = {
        "gpt2": lambda: tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=64, **common),
        "llama": lambda: tf.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common),
        "qwen2": lambda: tf.Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common),
        "olmo": lambda: tf.OlmoConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, **common),
        "olmo2": lambda: tf.Olmo2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, **common),
    }
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(configs[arch]())


def save_tiny_model(folder: Path, arch: str = "llama", texts: list[str] | None = None) -> Path:
    texts = texts or random_texts(200)
    tokenizer = tiny_tokenizer(texts)
    model = tiny_model(arch, len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    return path


def written_ids(folder: Path) -> list[str]:
    """The ids of every record in a folder's JSONL files (gzipped or not), sorted: what a datatrove writer wrote."""
    ids = []
    for path in folder.rglob("*.jsonl*"):
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as handle:
            ids += [orjson.loads(line)["id"] for line in handle]
    return sorted(ids)
