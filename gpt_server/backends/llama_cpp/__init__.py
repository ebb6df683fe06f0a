"""llama.cpp backend (GGUF) with batched decoding of several sequences."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..options import ChatOptions, GrammarOptions, ParallelOptions, ThreadOptions
from ..registry import Engine

__all__ = ["LlamaCppOptions", "SpeculativeOptions", "ENGINES", "DEFAULT_COMPUTE_NICE"]

# the engine's compute threads below the event loops on a CPU host (``compute_nice``)
DEFAULT_COMPUTE_NICE = 5
# most drafts per sequence and step by mode. Prompt lookup proposes for free and the engine's
# ``DraftGate`` verifies only as many as pay, so a long offer costs nothing where rows are dear
# and wins where they are cheap (F32 on 2 cores, rewrites at one stream: 1.47x at 5, 1.50x at
# 8, 1.57-1.59x at 12-16). A draft model pays a decode per token it proposes, used or not.
DEFAULT_DRAFTS = {"ngram": 12, "draft": 5}


class SpeculativeOptions(BaseModel):
    """``speculative:`` drafts a few tokens per decoding sequence and verifies them in the same
    batch; the output is the same as without (greedy: token for token; seeded: the same draws)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["ngram", "draft"] = Field(
        description="ngram: prompt lookup (the next tokens after the latest earlier match of the last n tokens in "
        "the prompt and the answer so far); draft: a second, small GGUF proposes them greedily"
    )
    num_draft_tokens: int = Field(
        None,  # type: ignore[assignment]  # set from the mode (``_check``)
        ge=1,
        le=16,
        description=f"most tokens drafted per sequence and step (default {DEFAULT_DRAFTS['ngram']} for ngram, "
        f"{DEFAULT_DRAFTS['draft']} for draft; how many of them a step verifies is measured)",
    )
    ngram_max: int = Field(3, ge=1, le=8, description="ngram: longest suffix looked up (tried first)")
    ngram_min: int = Field(2, ge=1, le=8, description="ngram: shortest suffix looked up")
    draft_model: str | None = Field(
        None, max_length=4096, description="draft: the draft GGUF (path or pkg:<package>/<path>), same vocabulary"
    )
    draft_n_gpu_layers: int = Field(0, ge=-1, le=100_000, description="draft: layers of the draft model on the GPU (-1 = all)")

    @model_validator(mode="after")
    def _check(self) -> SpeculativeOptions:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must not exceed ngram_max ({self.ngram_max})")
        if self.mode == "draft" and not self.draft_model:
            raise ValueError("mode 'draft' needs draft_model (a GGUF path or pkg:<package>/<path>)")
        if self.mode == "ngram" and self.draft_model:
            raise ValueError("draft_model is only used with mode 'draft'")
        if self.num_draft_tokens is None:
            self.num_draft_tokens = DEFAULT_DRAFTS[self.mode]
        return self


class LlamaCppOptions(ChatOptions, GrammarOptions, ParallelOptions, ThreadOptions):
    n_batch: int | None = Field(None, ge=16, le=65536, description="most tokens per engine step (default 512)")
    n_gpu_layers: int | None = Field(None, ge=-1, description="layers offloaded to the GPU (-1 = all)")
    repack: bool | None = Field(
        None,
        description="llama.cpp's extra weight buffers (repacked layouts, AMX; its --no-repack turns them off); "
        "default: on, off on CPUs with AMX, whose AMX path crashes on some hosts (llama.cpp#20824)",
    )
    hugepages: bool | None = Field(
        None,
        description="read the weights into memory backed by 2 MiB transparent huge pages instead of mapping the "
        "GGUF file (Linux, THP not 'never'): decode steps on the CPU about 3 % shorter; the weights are then the "
        "process's own, not shared through the page cache; default: on when the model runs on the CPU",
    )
    compute_nice: int | None = Field(
        None,
        ge=0,
        le=19,
        description="nice steps the engine's compute threads (the decode loop and ggml's threads) run below "
        "the rest of the worker, so that the event loops streaming the tokens get a core as soon as they wake "
        f"(Linux); default {DEFAULT_COMPUTE_NICE} when the model runs on the CPU, 0 with GPU layers",
    )
    turnaround_hold_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="after a sequence finishes, how long the engine may wait for the request that follows it before "
        "its next decode step, so that request joins that step (clients that send their next request as soon as an "
        "answer ends: agent loops, scripts, benchmarks); it waits only where one other stream runs and three "
        "quarters of the recent requests came back within three quarters of a step, a little longer than they took, "
        "at most a step; default: a "
        "recent step's time (at most 50 ms); a number: these milliseconds in place of the step's; 0: never wait",
    )
    speculative: SpeculativeOptions | None = Field(
        None,
        description="speculative decoding (default off): {mode: ngram | draft, num_draft_tokens: 1..16 (12 ngram, 5 draft), "
        "ngram_max (3), ngram_min (2), draft_model}; sequences with a grammar (structured output, enforced tools) "
        "are not drafted",
    )


ENGINES = (
    Engine(
        name="llama_cpp",
        backend="gpt_server.backends.llama_cpp.backend:LlamaCppBackend",
        options=LlamaCppOptions,
        kinds=frozenset({"auto"}),
        description="GGUF chat/completion models through llama.cpp, several sequences decoded together",
    ),
)
