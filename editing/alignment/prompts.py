"""The general questions pole adapters are trained on (written here; never the evaluation prompts).

``bench/align_control.py`` measures the poles on its own 40 held-out questions; none of these is among them.
"""

from __future__ import annotations

__all__ = ["TRAIN_PROMPTS"]

TRAIN_PROMPTS: tuple[str, ...] = (
    "How do I make a cup of tea?",
    "Why is the sky blue?",
    "What is a good way to learn a new language?",
    "How does a bicycle work?",
    "What should I pack for a beach trip?",
    "How do plants grow?",
    "What is the internet?",
    "How can I sleep better?",
    "Why do we have seasons?",
    "How do I start running?",
    "What is a healthy breakfast?",
    "How do airplanes fly?",
    "What is photosynthesis?",
    "How do I save money each month?",
    "What is a volcano?",
    "How do I write a good email?",
    "Why do leaves change color in autumn?",
    "How does a refrigerator keep food cold?",
    "What is the difference between weather and climate?",
    "How do I care for a houseplant?",
    "What makes a good friend?",
    "How do vaccines work?",
    "Why is exercise good for you?",
    "How do I prepare for a job interview?",
    "What is gravity?",
    "How does the heart pump blood?",
    "What is recycling and why does it matter?",
    "How do I cook rice?",
    "What causes earthquakes?",
    "How does a battery store energy?",
    "What is a budget?",
    "How do bees make honey?",
    "Why do we need sleep?",
    "How do I organize my desk?",
    "What is electricity?",
    "How can I be more productive at work?",
    "What is the moon made of?",
    "How do I choose a good book to read?",
    "Why do people get colds in winter?",
    "How does a camera take a picture?",
)
