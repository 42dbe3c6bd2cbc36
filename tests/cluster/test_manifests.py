"""The shipped Serve config and KubeRay manifest name chatd's real entry point and flags."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tests.cluster.conftest import require_ray

require_ray()

from chatd.cli import build_parser  # noqa: E402
from chatd.cluster.app import app_builder  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _check_serve_config(config: dict) -> list[str]:
    (app,) = config["applications"]
    assert app["import_path"] == "chatd.cluster.app:app_builder"
    assert app["route_prefix"] == "/"
    argv = shlex.split(app["args"]["argv"])
    ns = build_parser().parse_args(["serve", *argv])
    assert ns.replicas and ns.threads
    return argv


def test_serve_config_builds_the_app() -> None:
    config = yaml.safe_load((DEPLOY / "chatd-serve.yaml").read_text())
    argv = _check_serve_config(config)
    app = app_builder({"argv": argv})
    assert app is not None


def test_rayservice_manifest() -> None:
    doc = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    spec = doc["spec"]
    assert set(spec) <= {"serveConfigV2", "rayClusterConfig", "upgradeStrategy",
                         "serviceUnhealthySecondThreshold",
                         "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc"}
    _check_serve_config(yaml.safe_load(spec["serveConfigV2"]))
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        assert {"groupName", "replicas", "rayStartParams", "template"} <= set(group)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
