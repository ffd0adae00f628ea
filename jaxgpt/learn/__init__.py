"""The "Let's build GPT" lecture path: its stages as models (stages.py), trained and
tabled against the lecture's losses (lecture.py); the notebook is
experiments/walkthrough.ipynb.
"""
