"""A third-party engine installed as its own package (entry point ``gpt_server.backends``) is
configurable and serves for real: the demo plug-in in tests/plugin_demo is pip-installed into
a temporary directory, named by ``work_mode`` in config.yaml, checked, served, and driven by
the openai SDK; its embeddings match the same model run by sentence-transformers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest
import yaml

from tests.embed_helpers import MINILM, entry, minilm_dir
from tests.helpers import base_config, served

PLUGIN_SRC = Path(__file__).resolve().parent.parent / "plugin_demo"
TEXTS = ["The cat sits on the mat.", "Quarterly revenue grew by twelve percent.", "How do I bake bread?"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("plugin-site")
    src = tmp_path_factory.mktemp("plugin-src") / "plugin_demo"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile",
         "--target", str(target), str(src)],
        check=True, timeout=300,
    )
    assert list(target.glob("gpt_server_demo_engine-*.dist-info")), "the plug-in did not install"
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def _config(**options: object) -> dict:
    return base_config(models=[entry("plug", MINILM, "embedding", work_mode="mean_pool", max_length=128, **options)])


def _check(cfg: dict, tmp: Path, env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "gpt_server.cli", "check-config", "-c", str(path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def test_plugin_work_mode_is_validated_by_its_own_options(plugin_env: dict[str, str], tmp_path: Path) -> None:
    without = _check(_config(), tmp_path, None)
    assert without.returncode == 2 and "work_mode 'mean_pool' is unknown" in without.stderr
    ok = _check(_config(), tmp_path, plugin_env)
    assert ok.returncode == 0, ok.stderr
    bad = _check(_config(max_batch_size=8, n_ctx=512, no_such_option=1), tmp_path, plugin_env)
    assert bad.returncode == 2
    assert "model_config.no_such_option: unknown key for work_mode mean_pool\n" in bad.stderr + "\n"
    assert "model_config.n_ctx: unknown key for work_mode mean_pool (an option of " in bad.stderr
    assert "max_batch_size" not in bad.stderr  # a text-task option the plug-in's Options take
    wrong_kind = _config()
    next(iter(wrong_kind["models"][0].values()))["model_type"] = "rerank"
    r = _check(wrong_kind, tmp_path, plugin_env)
    assert r.returncode == 2 and "work_mode 'mean_pool' cannot serve model_type 'rerank'" in r.stderr


def test_plugin_engine_serves_real_embeddings(plugin_env: dict[str, str], tmp_path: Path) -> None:
    with served(_config(), tmp_path, "plugin-engine", env=plugin_env) as srv:
        client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="none", max_retries=0, timeout=60)
        models = {m.id: m for m in client.models.list().data}
        assert "plug" in models
        got = client.embeddings.create(model="plug", input=TEXTS)
        vectors = np.array([d.embedding for d in got.data])
        assert vectors.shape == (3, 384) and got.usage.prompt_tokens > 0
        from sentence_transformers import SentenceTransformer

        ref = SentenceTransformer(minilm_dir(), device="cpu").encode(TEXTS, normalize_embeddings=True)
        cos = (vectors * ref).sum(1)
        assert np.all(cos > 0.999), cos
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model="plug", input=[[1, 2, 3]])
        assert "text inputs only" in str(err.value)
