"""The fixed prompt set: short, varied chat questions and embedding sentences."""

from __future__ import annotations

__all__ = ["CHAT_PROMPTS", "EMBED_SENTENCES", "chat_prompt", "embed_inputs"]

CHAT_PROMPTS: tuple[str, ...] = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving.",
    "List some tips for learning to cook at home on a small budget.",
    "Describe the water cycle to a ten year old.",
    "What are the main differences between a city and a village?",
    "Give me a recipe for a simple vegetable soup.",
    "Why do leaves change colour in autumn?",
    "Write a friendly email inviting a colleague to a team lunch.",
)

EMBED_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A lighthouse keeper found a message in a bottle on the shore.",
    "Vegetable soup is warm, cheap and easy to make at home.",
    "Leaves change colour in autumn as chlorophyll breaks down.",
    "The team met for lunch to celebrate the end of the project.",
    "Bicycles stay upright because of steering and momentum.",
    "Cities are dense and busy while villages are small and quiet.",
    "Rain falls, rivers flow to the sea, and water evaporates again.",
)


def chat_prompt(i: int) -> str:
    return CHAT_PROMPTS[i % len(CHAT_PROMPTS)]


def embed_inputs(i: int, items: int) -> list[str]:
    return [EMBED_SENTENCES[(i + j) % len(EMBED_SENTENCES)] for j in range(items)]
