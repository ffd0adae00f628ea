"""Datasets: text -> token bins on disk (chars.py: character-level, e.g. shakespeare_char;
bpe.py: GPT-2 BPE, OpenWebText), and the tokenizers a dataset and a checkpoint describe
(tokenizer.py).
"""
