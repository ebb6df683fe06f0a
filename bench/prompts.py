"""The fixed prompt sets: short, varied chat questions, input-grounded tasks (the answer reuses
the prompt: rewrites, copy-edits, summaries, code edits) and embedding sentences."""

from __future__ import annotations

__all__ = ["CHAT_PROMPTS", "GROUNDED_PROMPTS", "EMBED_SENTENCES", "VARIED_SENTENCES", "QUALITY_SENTENCES", "chat_prompt", "embed_inputs"]

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

_HARBOUR = (
    "The old harbour town wakes slowly. Fishing boats return at dawn, their decks stacked with crates of silver "
    "fish, and the market opens as soon as the first boat is tied up. Gulls circle above the stalls while traders "
    "shout prices and children run between the baskets. By noon the square is quiet again, and the smell of salt "
    "and tar hangs over the empty stones."
)
_MEMO = (
    "Team, from Monday the office will open at 8 am instead of 9 am. The kitchen on the second floor will be closed "
    "for repairs until the end of the month, so please use the kitchen on the ground floor. Remember to book the "
    "meeting rooms in the shared calendar, and to switch off the lights when you leave in the evening."
)
_CODE = (
    "def total(items):\n"
    "    result = 0\n"
    "    for item in items:\n"
    "        if item.count > 0:\n"
    "            result = result + item.price * item.count\n"
    "    return result\n\n\n"
    "def average(items):\n"
    "    if not items:\n"
    "        return 0\n"
    "    return total(items) / len(items)\n"
)
_CLASS = (
    "class Counter:\n"
    "    def __init__(self):\n"
    "        self.count = 0\n\n"
    "    def increment(self):\n"
    "        self.count = self.count + 1\n\n"
    "    def reset(self):\n"
    "        self.count = 0\n"
)

# answers that copy much of the prompt: where prompt-lookup drafts are accepted
GROUNDED_PROMPTS: tuple[str, ...] = (
    "Repeat the following text exactly, word for word:\n\n" + _HARBOUR,
    "Copy-edit this memo: fix any mistakes and return the full corrected memo.\n\n" + _MEMO,
    "Rewrite this paragraph in the past tense:\n\n" + _HARBOUR,
    "Summarise this memo in two sentences, reusing its wording:\n\n" + _MEMO,
    "Rename the function total to order_total everywhere in this Python code and show the whole code:\n\n" + _CODE,
    "Add a method decrement to this class that lowers count by one, and show the whole class:\n\n" + _CLASS,
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

# sentences of kinds the quantisation of embeddings is most likely to hurt: instructions,
# code, another language, numbers, a long one (tests/engines/test_onnx.py checks on them too)
VARIED_SENTENCES: tuple[str, ...] = (
    "Reset your password from the account settings page, then sign in again.",
    "def add(a, b):\n    return a + b",
    "Le chat dort sur le canapé depuis ce matin.",
    "Order #48213 shipped on 2024-03-02 and arrives in 3-5 business days.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a "
    "by-product; it takes place in the chloroplasts of plant cells and of some algae and bacteria.",
    "The central bank left interest rates unchanged, citing persistent inflation in services.",
)

# the fixed set an engine's vectors are compared on (cosine to torch's): short and long
# sentences, paraphrases, numbers, code, another language
QUALITY_SENTENCES: tuple[str, ...] = (
    *EMBED_SENTENCES,
    "The cat sits on the mat.",
    "A cat is sitting on a mat.",
    "Quarterly revenue grew by twelve percent.",
    "The company's sales rose 12% this quarter.",
    "How do I bake sourdough bread?",
    *VARIED_SENTENCES,
)


def chat_prompt(i: int) -> str:
    return CHAT_PROMPTS[i % len(CHAT_PROMPTS)]


def embed_inputs(i: int, items: int) -> list[str]:
    return [EMBED_SENTENCES[(i + j) % len(EMBED_SENTENCES)] for j in range(items)]
