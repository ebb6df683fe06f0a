"""The ratchet of the backend contract suites: every registered engine runs the suite of
every kind it serves, or says in its own test module why it cannot (``UNRUNNABLE``); every
kind has one suite whose tests cover all of the kind's capabilities.

Adding an engine therefore means adding ``tests/engines/test_<engine>.py``; this test
fails until it exists."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Mapping
from types import ModuleType

import pytest

import tests.contract
import tests.engines
from gpt_server.backends import registry
from gpt_server.backends.registry import Engine, engines
from gpt_server.protocol.kinds import kinds
from tests.contract.base import CAPABILITY_ATTR, Suite


def suites() -> dict[str, type[Suite]]:
    """The kind suites declared in tests/contract, by kind."""
    found: dict[str, type[Suite]] = {}
    for mod in pkgutil.iter_modules(tests.contract.__path__):
        module = importlib.import_module(f"tests.contract.{mod.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Suite) and "kind" in vars(obj) and obj.__module__ == module.__name__:
                assert obj.kind not in found, f"two suites for kind {obj.kind!r}: {found[obj.kind].__name__}, {obj.__name__}"
                found[obj.kind] = obj
    return found


def suite_tests(suite: type) -> dict[str, object]:
    return {name: fn for name, fn in inspect.getmembers(suite, inspect.isfunction) if name.startswith("test")}


def engine_module_name(engine: str) -> str:
    return f"test_{engine.replace('-', '_')}"


def _engine_module(engine: str) -> ModuleType | None:
    name = f"tests.engines.{engine_module_name(engine)}"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def coverage_problems(registered: Mapping[str, Engine]) -> list[str]:
    """What is missing for ``registered`` engines to be covered (empty: all covered)."""
    by_kind = suites()
    problems: list[str] = []
    for name, engine in sorted(registered.items()):
        module = _engine_module(name)
        path = f"tests/engines/{engine_module_name(name)}.py"
        if module is None:
            problems.append(f"engine '{name}' has no test module {path}")
            continue
        unrunnable = getattr(module, "UNRUNNABLE", {})
        classes = [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
        for kind in sorted(engine.kinds):
            subclasses = [c for c in classes if kind in by_kind and issubclass(c, by_kind[kind])]
            for c in subclasses:
                if not c.__name__.startswith("Test"):
                    problems.append(f"{path}: {c.__name__} is not collected by pytest (name it Test…)")
                for test, reason in getattr(c, "skips", {}).items():
                    if test not in suite_tests(c) or not str(reason).strip():
                        problems.append(f"{path}: {c.__name__}.skips names no suite test or gives no reason: {test!r}")
            reason = unrunnable.get(kind)
            if subclasses and reason:
                problems.append(f"{path}: kind '{kind}' both runs a suite and is listed in UNRUNNABLE")
            elif not subclasses and not (isinstance(reason, str) and reason.strip()):
                problems.append(f"{path}: engine '{name}' serves '{kind}' but neither subclasses its suite "
                                f"({by_kind[kind].__name__ if kind in by_kind else 'none exists'}) nor lists it in UNRUNNABLE")
        for kind in set(unrunnable) - set(engine.kinds):
            problems.append(f"{path}: UNRUNNABLE names kind '{kind}', which engine '{name}' does not serve")
    return problems


def test_every_registered_engine_runs_or_explains_each_of_its_kinds() -> None:
    assert coverage_problems(engines()) == []


def test_every_engine_test_module_names_a_registered_engine() -> None:
    known = {engine_module_name(n) for n in engines()}
    modules = {m.name for m in pkgutil.iter_modules(tests.engines.__path__) if m.name.startswith("test_")}
    assert modules - known == set()


def test_every_kind_has_one_suite_covering_all_its_capabilities() -> None:
    by_kind = suites()
    assert set(by_kind) == set(kinds())
    for kind, suite in by_kind.items():
        tagged: set[str] = set()
        for name, fn in suite_tests(suite).items():
            caps = getattr(fn, CAPABILITY_ATTR, frozenset())
            assert caps, f"{suite.__name__}.{name} does not say which capability it covers (@covers)"
            tagged |= caps
        assert tagged == set(kinds()[kind].capabilities), suite.__name__


def test_an_engine_without_a_test_module_fails_the_ratchet(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Engine(name="fake-engine", backend="nowhere:Fake", options=registry.ModelConfig, kinds=frozenset({"rerank"}))
    monkeypatch.setattr(registry, "_ENGINES", {**engines(), "fake-engine": fake})
    assert coverage_problems(engines()) == ["engine 'fake-engine' has no test module tests/engines/test_fake_engine.py"]


def test_an_engine_serving_a_kind_its_module_skips_fails_the_ratchet(monkeypatch: pytest.MonkeyPatch) -> None:
    """piper's module runs the TTS suite only: a piper that also claimed ASR would be uncovered."""
    piper = engines()["piper"]
    grown = Engine(name="piper", backend=piper.backend, options=piper.options, kinds=piper.kinds | {"asr"})
    monkeypatch.setattr(registry, "_ENGINES", {**engines(), "piper": grown})
    (problem,) = coverage_problems(engines())
    assert "engine 'piper' serves 'asr'" in problem and "AsrSuite" in problem
