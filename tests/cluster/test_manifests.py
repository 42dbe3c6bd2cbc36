"""The shipped Serve config and KubeRay manifest name chatd's real entry point and flags."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
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


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayservice-gpu.yaml"])
def test_rayservice_manifest(name: str) -> None:
    doc = yaml.safe_load((DEPLOY / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    spec = doc["spec"]
    assert set(spec) <= {"serveConfigV2", "rayClusterConfig", "upgradeStrategy",
                         "serviceUnhealthySecondThreshold",
                         "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc"}
    argv = _check_serve_config(yaml.safe_load(spec["serveConfigV2"]))
    ns = build_parser().parse_args(["serve", *argv])
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        assert {"groupName", "replicas", "rayStartParams", "template"} <= set(group)
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values())
        # One replica per pod: the pod gives Ray what each replica reserves.
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert int(params["num-cpus"]) == ns.threads == int(limits["cpu"])
        assert float(params.get("num-gpus", 0)) == ns.gpus_per_replica \
            == float(limits.get("nvidia.com/gpu", 0))


def test_gpus_per_replica_reach_ray() -> None:
    """--gpus-per-replica is the engine replicas' num_gpus (Ray places them on GPUs and
    sets CUDA_VISIBLE_DEVICES); without it they ask for none."""
    for argv, gpus in (("--replicas 2 --threads 4 --gpus-per-replica 1", 1.0),
                       ("--replicas 2 --threads 2", None)):
        app = app_builder({"argv": argv})
        # The engine deployment, bound as the ingress's argument (Serve keeps it in private
        # attributes; the Ray version is pinned).
        engine = app._bound_deployment.init_args[0]._bound_deployment
        options = engine.ray_actor_options
        assert options.get("num_gpus") == gpus and options["num_cpus"] == int(argv.split()[3])
