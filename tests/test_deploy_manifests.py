"""deploy/kubernetes/vllm.yaml agrees with what the vLLM backend needs (no cluster here: the manifests are read, and
Personae's own config loader and the vLLM plugin's parser read the settings they carry)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from plugins.vllm.config import parse_config
from plugins.vllm.server import ManagedServer
from runtime.config import load_settings

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "vllm.yaml"


@pytest.fixture(scope="module")
def objects():
    """Every object in the manifest by (kind, name)."""
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def container(workload) -> dict:
    return workload["spec"]["template"]["spec"]["containers"][0]


def mounts(workload) -> dict:
    """mountPath -> the claim (or volume kind) mounted there."""
    spec = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") or next(iter(set(v) - {"name"}))
               for v in spec["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(workload)["volumeMounts"]}


def expand(args, settings) -> list[str]:
    """Kubernetes' $(VAR) substitution in container args."""
    out = []
    for arg in args:
        for name, value in settings.items():
            arg = arg.replace(f"$({name})", value)
        out.append(arg)
    return out


def test_personae_reads_its_config_map_as_the_vllm_backend_on_every_pod(objects, tmp_path, monkeypatch):
    toml = tmp_path / "personae.toml"
    toml.write_text(objects["ConfigMap", "personae-config"]["data"]["personae.toml"])
    monkeypatch.setenv("PERSONAE_CONFIG", str(toml))
    settings = load_settings()
    assert settings.backend == "vllm"
    vllm = parse_config(settings.plugin_settings("vllm"))
    service, pods = objects["Service", "vllm"], objects["StatefulSet", "vllm"]
    assert service["spec"]["clusterIP"] == "None" and pods["spec"]["serviceName"] == "vllm"  # a DNS name per pod
    port = service["spec"]["ports"][0]["port"]
    expected = [f"http://vllm-{i}.vllm:{port}" for i in range(pods["spec"]["replicas"])]
    assert vllm.urls == expected  # one URL per replica: each gets the adapters it needs


def test_vllm_pods_run_with_what_a_server_personae_starts_runs_with(objects):
    pods = objects["StatefulSet", "vllm"]
    settings = objects["ConfigMap", "vllm-settings"]["data"]
    vllm = container(pods)
    args = expand(vllm["args"], settings)
    ours = ManagedServer(["vllm"], "/models/base", host="0.0.0.0", port=8000)
    assert "--enable-lora" in args
    for flag in ("--model", "--port", "--max-loras", "--max-lora-rank"):  # as our own started server gets them
        assert args[args.index(flag) + 1] == ours.argv[ours.argv.index(flag) + 1], flag
    assert "/models" in mounts(pods)
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == ours.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]
    # Tensor parallelism as a value: the GPU limit follows it.
    assert args[args.index("--tensor-parallel-size") + 1] == settings["TENSOR_PARALLEL_SIZE"]
    assert str(vllm["resources"]["limits"]["nvidia.com/gpu"]) == settings["TENSOR_PARALLEL_SIZE"]
    # The base model folder comes from the Personae image (prompts go as token ids: same tokenizer).
    init = pods["spec"]["template"]["spec"]["initContainers"][0]
    assert init["image"] == container(objects["Deployment", "personae"])["image"]
    assert "resolve_model_folder" in init["args"][0] and "/models/base" in init["args"][0]


def test_adapters_are_shared_at_the_path_personae_hands_to_vllm(objects):
    personae, pods = objects["Deployment", "personae"], objects["StatefulSet", "vllm"]
    env = {e["name"]: e.get("value") for e in container(personae)["env"]}
    adapters = f"{env['PERSONAE_DATA_DIR']}/adapters"  # the registry's folder (settings.data_path / "adapters")
    assert mounts(personae)[adapters] == mounts(pods)[adapters] == "personae-adapters"
    claim = objects["PersistentVolumeClaim", "personae-adapters"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # Personae writes, every vLLM pod reads
    assert personae["spec"]["replicas"] == 1 and personae["spec"]["strategy"]["type"] == "Recreate"  # one SQLite writer


def test_every_full_version_in_full_urls_has_a_vllm_deployment_on_its_materialised_folder(objects, tmp_path,
                                                                                         monkeypatch):
    from urllib.parse import urlparse

    from adapters.materialise import MARKER, materialised_folder

    toml = tmp_path / "personae.toml"
    toml.write_text(objects["ConfigMap", "personae-config"]["data"]["personae.toml"])
    monkeypatch.setenv("PERSONAE_CONFIG", str(toml))
    vllm = parse_config(load_settings().plugin_settings("vllm"))
    personae = objects["Deployment", "personae"]
    env = {e["name"]: e.get("value") for e in container(personae)["env"]}
    registry_root = f"{env['PERSONAE_DATA_DIR']}/adapters"  # where Personae materialises versions
    settings = objects["ConfigMap", "vllm-settings"]["data"]
    assert vllm.full_urls
    for ref, url in vllm.full_urls.items():
        host, port = urlparse(url).hostname, urlparse(url).port
        service = objects["Service", host]
        workload = next(d for (kind, _), d in objects.items() if kind == "Deployment" and
                        d["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"])
        assert service["spec"]["ports"][0]["port"] == port
        character, number = ref.split("@")
        folder = str(materialised_folder(registry_root, character, int(number)))
        spec = workload["spec"]["template"]["spec"]
        # The server runs on the very folder Personae builds on the shared volume, as a plain model (no LoRA) ...
        assert mounts(workload)[registry_root] == mounts(personae)[registry_root] == "personae-adapters"
        args = expand(container(workload)["args"], settings)
        ours = ManagedServer(["vllm"], folder, host="0.0.0.0", port=port, lora=False)  # what full_command runs
        assert args[:len(ours.argv) - 1] == ours.argv[1:] and "--enable-lora" not in args
        assert args[args.index("--tensor-parallel-size") + 1] == settings["TENSOR_PARALLEL_SIZE"]
        assert str(container(workload)["resources"]["limits"]["nvidia.com/gpu"]) == settings["TENSOR_PARALLEL_SIZE"]
        # ... and starts once the folder is complete: the marker is the last file Personae writes there.
        waiting = spec["initContainers"][0]
        assert f"{folder}/{MARKER}" in waiting["args"][0] and registry_root in [
            m["mountPath"] for m in waiting["volumeMounts"]]
