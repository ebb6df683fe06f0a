"""Backend contract suites: one pytest class per model kind, written once against the
OpenAI wire contract and run by every engine that serves the kind.

An engine's own module ``tests/engines/test_<engine>.py`` subclasses the suite of each kind
it serves (``class TestPiperTts(TtsSuite)``) and says how to serve its model; kinds it cannot
serve on a CPU-only machine are listed in that module's ``UNRUNNABLE`` with the reason.
``tests/unit/test_contract_ratchet.py`` keeps every registered engine and kind covered.
"""

from tests.contract.base import Suite, covers

__all__ = ["Suite", "covers"]
