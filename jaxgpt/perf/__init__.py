"""Speed: the benchmark of the train step (bench.py), the same step in PyTorch for a
comparison in one sitting (compare.py), model FLOPs utilisation (mfu.py) and how a
process runs best on a CPU (cpu.py: XLA:CPU flags, tcmalloc).
"""
