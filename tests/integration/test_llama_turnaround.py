"""The llama.cpp engine waits after a finish for the request that follows it
(``model_config.turnaround_hold_ms``, ``backends/textgen/turnaround.py``), served for real.

Two clients (the openai SDK) each send their next request as soon as their last answer ends.
With a generous bound (200 ms, so a slow host's round trip qualifies too) the engine learns that
they come back at once and waits for them: its stats count the waits and those a request ended.
The answers are the ones a lone client gets (greedy), whatever step a request joined.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gpt_server.backends.textgen.turnaround import HORIZON
from tests.helpers import Server, base_config, served, smollm_entry

PROMPTS = ["Name a colour.", "Name a fruit.", "Name an animal.", "Name a city."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg = base_config(api_keys="k1", models=[smollm_entry(n_parallel=4, turnaround_hold_ms=200)])
    with served(cfg, tmp_path_factory.mktemp("turnaround"), "llama_turnaround", 1) as srv:
        yield srv


def _stats(server: Server) -> dict[str, int]:
    (w,) = server.workers()
    info = httpx.get(f"{w['address']}/worker/info", headers=server.internal_headers(), timeout=10).json()
    return info["engine_stats"]


def _ask(client: openai.OpenAI, prompt: str) -> str:
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in r if c.choices)


def _closed_loop(
    client: openai.OpenAI,
    prompts: list[str],
    users: int,
    rounds: int,
    stride: int,
    wave: Callable[[], None] | None = None,
) -> list[tuple[str, str]]:
    """``users`` threads, each asking ``rounds`` prompts back to back (user ``u``'s ``k``-th is
    ``prompts[(u + stride * k) % len]``); every (prompt, answer). ``wave``: each round's requests
    leave together once every user has its last answer (a harness sending a batch at a time),
    and ``wave()`` runs between rounds."""
    got: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(users, action=wave, timeout=60)

    def user(u: int) -> None:
        try:
            for k in range(rounds):
                if wave is not None:
                    barrier.wait()
                p = prompts[(u + stride * k) % len(prompts)]
                got.append((p, _ask(client, p)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            barrier.abort()
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(got) == users * rounds
    return got


def _alone(server: Server, client: openai.OpenAI, prompts: list[str]) -> tuple[dict[str, str], int]:
    """Each prompt's answer asked alone, and the most decode steps one took (first token included)."""
    alone: dict[str, str] = {}
    most = 0
    for p in prompts:
        before = _stats(server)["step_steps"]
        alone[p] = _ask(client, p)
        most = max(most, _stats(server)["step_steps"] - before)
    return alone, most


def _waves_in_one_step(
    seen: list[dict[str, int]], stats: dict[str, int], counter: str, lone_steps: int
) -> tuple[int, list[int], list[int]]:
    """Of the waves (``seen[k]``: the stats before wave k, ``stats`` after the last), how many
    began a ``counter`` wait and took as many decode steps as the longest answer alone (their
    prompts went in in one step); each wave's steps and waits."""
    ends = [*seen[1:], stats]
    steps = [b["step_steps"] - a["step_steps"] for a, b in zip(seen, ends, strict=True)]
    waits = [b[counter] - a[counter] for a, b in zip(seen, ends, strict=True)]
    return sum(1 for n, w in zip(steps, waits, strict=True) if w and n == lone_steps), steps, waits


def test_clients_that_come_back_at_once_are_waited_for(server: Server, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k1", max_retries=0, timeout=60)
    alone = {p: _ask(client, p) for p in PROMPTS}  # one at a time: nothing runs beside a finish, no wait
    assert _stats(server)["turnaround_holds"] == 0
    got = _closed_loop(client, PROMPTS, users=2, rounds=10, stride=2)
    assert all(text == alone[p] for p, text in got)
    stats = _stats(server)
    # the first few finishes teach it the gaps; after them most finishes beside a running stream wait
    assert stats["turnaround_holds"] >= 4, stats
    assert stats["turnaround_joined"] >= stats["turnaround_holds"] // 2, stats


def test_a_group_that_finished_together_goes_in_together(server: Server) -> None:
    """Four clients whose answers all end at ``max_tokens``, sending in waves: each wave's
    requests come back a few milliseconds apart after the last of the previous wave finished, and
    the first to arrive waits for the rest, so the four prompts go in together
    (``turnaround_gathered``, from the second wave on); the answers stay a lone client's.

    (Free-running, four clients can settle as two pairs a step apart, which finish beside two
    running streams and are not waited for; a wave always ends with the group's finish. A
    free-running run on CI's host gathered once in eight rounds.)"""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k1", max_retries=0, timeout=60)
    prompts = [
        "Tell me a long story about a dragon.",
        "Describe the sea in detail.",
        "Explain how a bicycle works.",
        "Write a poem about autumn.",
    ]
    alone, lone_steps = _alone(server, client, prompts)
    seen: list[dict[str, int]] = []
    got = _closed_loop(client, prompts, users=4, rounds=10, stride=1, wave=lambda: seen.append(_stats(server)))
    assert all(text == alone[p] for p, text in got)
    # the first waves teach it the gaps; later ones are gathered (where arrivals are not so close
    # that all four are in before the engine looks: then no wait is needed), their four prompts in
    # one step (one that came after its wait ended, on a loaded host, costs its wave a step)
    together, steps, gathered = _waves_in_one_step(seen, _stats(server), "turnaround_gathered", lone_steps)
    assert together >= 3, (lone_steps, steps, gathered)


def test_requests_sent_at_once_to_an_idle_engine_go_in_together(server: Server) -> None:
    """Four clients sending in waves a second and more apart (the last wave's finishes past
    ``HORIZON``): each wave's requests reach an idle engine a few milliseconds apart, with no
    finish announcing them. Once a few waves taught it, the first waits for the rest
    (``turnaround_bursts``) and the wave takes one answer's steps; the answers stay a lone client's."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k1", max_retries=0, timeout=60)
    prompts = ["Describe a forest in detail.", "Tell me about the moon.", "Explain how rain forms.", "Write about a ship."]
    alone, lone_steps = _alone(server, client, prompts)
    seen: list[dict[str, int]] = []

    def wave() -> None:
        time.sleep(HORIZON + 0.2)
        seen.append(_stats(server))

    got = _closed_loop(client, prompts, users=4, rounds=7, stride=1, wave=wave)
    assert all(text == alone[p] for p, text in got)
    # (it learns from four such arrivals, earlier tests' included)
    together, steps, bursts = _waves_in_one_step(seen, _stats(server), "turnaround_bursts", lone_steps)
    assert together >= 2, (lone_steps, steps, bursts)
