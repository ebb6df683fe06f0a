"""Config of run-time model management: sizes, load / keep_alive / memory_estimate, bounds."""

from __future__ import annotations

import copy

import pytest

from gpt_server.config import DEFAULT_CONFIG_DATA, ConfigError, parse_config
from gpt_server.sizes import format_bytes, parse_bytes


@pytest.mark.parametrize(
    ("text", "value"),
    [("8GiB", 8 * 2**30), ("512MB", 512 * 10**6), ("1.5 gib", 3 * 2**29), ("1024", 1024), ("2k", 2000), ("1e3", 1000)],
)
def test_sizes_parse(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "8 parsecs", "1,5GB"])
def test_sizes_refuse_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes(text)


def test_format_bytes() -> None:
    assert format_bytes(2.5 * 2**30) == "2.5 GiB" and format_bytes(512) == "512 B"


def _cfg(**entry: object) -> dict:
    data = copy.deepcopy(DEFAULT_CONFIG_DATA)
    next(iter(data["models"][0].values())).update(entry)
    return data


def test_entry_and_serve_args_take_the_new_keys() -> None:
    data = _cfg(load="on_demand", keep_alive=-1, memory_estimate="300MiB")
    data["serve_args"].update(memory_budget="8GiB", load_timeout=30)
    cfg = parse_config(data)
    e = cfg.enabled_models()[0]
    assert (e.load, e.keep_alive, e.memory_estimate) == ("on_demand", -1, 300 * 2**20)
    assert cfg.serve_args.memory_budget == 8 * 2**30 and cfg.serve_args.load_timeout == 30
    assert parse_config(copy.deepcopy(DEFAULT_CONFIG_DATA)).enabled_models()[0].load == "eager"


@pytest.mark.parametrize(
    ("entry", "serve", "named"),
    [
        ({"load": "lazy"}, {}, "load"),
        ({"keep_alive": -0.5}, {}, "keep_alive"),
        ({"keep_alive": 10**9}, {}, "keep_alive"),
        ({"memory_estimate": "lots"}, {}, "memory_estimate"),
        ({}, {"memory_budget": "8 parsecs"}, "serve_args.memory_budget"),
        ({}, {"load_timeout": 0}, "serve_args.load_timeout"),
    ],
)
def test_bad_values_are_named(entry: dict, serve: dict, named: str) -> None:
    data = _cfg(**entry)
    data["serve_args"].update(serve)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_config(data)
