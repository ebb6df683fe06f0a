"""cluster: / ray_options: validation, and what a Ray replica's worker reads (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from gpt_server.config import ConfigError, parse_config
from tests.helpers import smollm_entry


def _data(**extra: Any) -> dict[str, Any]:
    return {"models": [smollm_entry(replicas=2)], **extra}


def test_cluster_defaults_to_local() -> None:
    cfg = parse_config(_data(), source="t")
    assert cfg.cluster.backend == "local" and cfg.cluster.address == "auto" and cfg.cluster.max_restarts == -1


@pytest.mark.parametrize(
    ("cluster", "key"),
    [
        ({"backend": "k8s"}, "cluster.backend"),
        ({"namespace": "bad name"}, "cluster.namespace"),
        ({"address": "x" * 600}, "cluster.address"),
        ({"max_restarts": -2}, "cluster.max_restarts"),
        ({"adress": "auto"}, "cluster.adress"),
    ],
)
def test_bad_cluster_settings_name_the_key(cluster: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(_data(cluster=cluster), source="t")


def test_ray_options_take_known_keys_only() -> None:
    data = _data()
    data["models"][0]["smollm2"]["ray_options"] = {"resources": {"node_a": 1}, "scheduling_strategy": "SPREAD"}
    assert parse_config(data, source="t").models[0].ray_options["resources"] == {"node_a": 1}
    data["models"][0]["smollm2"]["ray_options"] = {"resourcez": {}}
    with pytest.raises(ConfigError, match="ray_options: unknown key.*resourcez"):
        parse_config(data, source="t")


def test_scaled_replica_config_and_secret_stay_out_of_repr() -> None:
    ray_mod = pytest.importorskip("gpt_server.cluster.ray")
    launch = ray_mod.ReplicaLaunch(_data(), "smollm2", 3, "http://127.0.0.1:1", "s3cret-value", 1)
    data = ray_mod._config_for(launch)
    workers = data["models"][0]["smollm2"]["workers"]
    assert len(workers) == 4 and workers[3] == workers[1]
    assert len(_data()["models"][0]["smollm2"]["workers"]) == 2  # the original is untouched
    parse_config(data, source="t")  # the worker of replica 3 validates it
    assert "s3cret-value" not in repr(launch) and "s3cret-value" not in repr(launch.for_replica(5))
    assert launch.for_replica(5).secret == "s3cret-value"
