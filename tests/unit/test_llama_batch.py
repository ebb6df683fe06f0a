"""``Batch``: rows written through numpy views land in the ``llama_batch`` llama.cpp reads."""

from __future__ import annotations

from gpt_server.backends.llama_cpp.speculative import Batch


def _rows(b: Batch, n: int) -> list[tuple[int, int, int, int, int]]:
    raw = b.raw
    return [(raw.token[i], raw.pos[i], raw.n_seq_id[i], raw.seq_id[i][0], raw.logits[i]) for i in range(n)]


def test_rows_put_one_by_one_and_as_a_run_are_the_same_batch() -> None:
    one, run = Batch(16), Batch(16)
    try:
        n = one.put(0, 7, 40, 2, True)
        for j, tok in enumerate([11, 12, 13, 14]):
            n = one.put(n, tok, 3 + j, 5, j == 3)
        for j, tok in enumerate([21, 22]):
            n = one.put(n, tok, j, 1, False)
        m = run.put(0, 7, 40, 2, True)
        m = run.put_run(m, [11, 12, 13, 14], 3, 5, True)
        m = run.put_run(m, [21, 22], 0, 1, False)
        assert n == m == 7
        assert _rows(one, n) == _rows(run, m) == [
            (7, 40, 1, 2, 1), (11, 3, 1, 5, 0), (12, 4, 1, 5, 0), (13, 5, 1, 5, 0), (14, 6, 1, 5, 1),
            (21, 0, 1, 1, 0), (22, 1, 1, 1, 0),
        ]
        # a row written again takes its new values (a batch is reused from step to step)
        run.put_run(0, [9, 8], 100, 3, False)
        assert _rows(run, 2) == [(9, 100, 1, 3, 0), (8, 101, 1, 3, 0)]
        assert run.put_run(5, [], 0, 0, True) == 5
    finally:
        one.free()
        run.free()
        run.free()  # a second free is a no-op
