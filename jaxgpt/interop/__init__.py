"""Weights in and out of jaxgpt: nanoGPT's ckpt.pt, Hugging Face directories, and the
PyTorch reference model the parity tests and benchmarks hold jaxgpt against.

bundle.py (what travels between formats), statedict.py (jaxgpt parameters <-> PyTorch
state_dict names and layouts), llama.py (Llama's names and config.json), nanogpt.py,
hf.py, convert.py (`jaxgpt convert`), torch_ref.py (nanoGPT's model in PyTorch).
"""
