"""load_pretrained by name and address: URLs, official names, hf-hub: (both layouts), the caches, offline mode.

Everything is served from 127.0.0.1 by the test (tests/local_server.py); huggingface_hub is pointed at it with
HF_ENDPOINT and at a temporary cache with HF_HUB_CACHE.
"""

import json

import pytest
import torch
from conftest import tiny
from safetensors.torch import save as safetensors_bytes

from local_server import COMMIT, Behaviour, LocalServer
from vitlab import create_model, load_pretrained
from vitlab.checkpoints import CheckpointError
from vitlab.checkpoints.export import export_checkpoint
from vitlab.checkpoints.pretrained import PRETRAINED, find_pretrained
from vitlab.checkpoints.remote import is_remote, url_cache_path
from vitlab.checkpoints.timm import timm_state_dict
from vitlab.cli import main


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("VITLAB_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "vitlab-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    # huggingface_hub read its environment when first imported (perhaps by another test); its agent-registry
    # request goes to the endpoint it read then, so turn it off here (vitlab passes HF_ENDPOINT per call)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)


@pytest.fixture
def server(monkeypatch):
    with LocalServer() as s:
        monkeypatch.setenv("HF_ENDPOINT", s.base)
        yield s


def small_model(**kw):
    model = create_model("ViT-Ti/16", **tiny(patch_size=8, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def same_logits(a, b):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def npz_bytes(model, tmp_path) -> bytes:
    return export_checkpoint(model, tmp_path / "m.npz", "npz").read_bytes()


def test_a_url_is_downloaded_to_the_cache_and_loaded(server, tmp_path):
    model = small_model(gelu="tanh")
    server.served.files["/ckpt/model.npz"] = npz_bytes(model, tmp_path)
    url = server.url("/ckpt/model.npz")
    assert is_remote(url)
    loaded = load_pretrained(url)
    assert same_logits(model, loaded)
    assert url_cache_path(url).is_file() and str(url_cache_path(url)).startswith(str(tmp_path / "vitlab-cache"))
    load_pretrained(url, num_classes=3)  # the second time from the cache
    assert len(server.requests("/ckpt/model.npz")) == 1


def test_a_missing_url_is_one_checkpoint_error(server):
    with pytest.raises(CheckpointError, match="HTTP 404") as e:
        load_pretrained(server.url("/nothing.npz"))
    assert "\n" not in str(e.value)


def test_official_names_resolve_to_the_public_bucket():
    assert find_pretrained("ViT-B_16").url == "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz"
    assert find_pretrained("imagenet21k+imagenet2012/R50+ViT-B_16").url == (
        "https://storage.googleapis.com/vit_models/imagenet21k%2Bimagenet2012/R50%2BViT-B_16.npz")
    assert find_pretrained("imagenet21k+imagenet2012/ViT-B_16").resolution == 384
    r_ti = find_pretrained("R_Ti_16")
    assert r_ti.url.endswith("/augreg/R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz")
    tuned = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384"
    assert find_pretrained(tuned).accuracy == 85.49 and find_pretrained(f"augreg/{tuned}.npz").resolution == 384
    other = "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--oxford_iiit_pet-steps_0k-lr_0.003-res_224"
    assert find_pretrained(other).url.endswith(f"/augreg/{other}.npz") and "oxford_iiit_pet" in find_pretrained(other).source
    assert find_pretrained("ViT-Q_99") is None and not is_remote("ViT-Q_99")
    assert len({p.name for p in PRETRAINED}) == len(PRETRAINED)


def test_an_official_name_loads_from_the_cache_offline(tmp_path, monkeypatch):
    model = small_model(gelu="tanh")
    cached = url_cache_path(find_pretrained("ViT-B_16").url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(npz_bytes(model, tmp_path))
    monkeypatch.setenv("VITLAB_OFFLINE", "1")
    assert same_logits(model, load_pretrained("ViT-B_16"))
    with pytest.raises(CheckpointError, match="offline") as e:
        load_pretrained("imagenet21k/ViT-L_16")
    assert "\n" not in str(e.value)


def test_an_official_name_is_fetched_from_its_url(server, tmp_path, monkeypatch):
    from vitlab.checkpoints import pretrained, remote

    model = small_model(gelu="tanh")
    server.served.files["/vit_models/imagenet21k/ViT-B_16.npz"] = npz_bytes(model, tmp_path)
    row = pretrained.find_pretrained("ViT-B_16")
    local = pretrained.Pretrained(row.name, server.url("/vit_models/imagenet21k/ViT-B_16.npz"), 224, row.source, None)
    monkeypatch.setattr(remote, "find_pretrained", lambda name: local if name == "ViT-B_16" else None)
    assert same_logits(model, load_pretrained("ViT-B_16"))


def hf_repo(model) -> dict[str, bytes]:
    """A transformers ViT repository's files, as vitlab's HF export writes them."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        folder = export_checkpoint(model, Path(d) / "hf", "hf")
        return {p.name: p.read_bytes() for p in folder.iterdir()}


def timm_repo(model) -> dict[str, bytes]:
    """A timm Hub repository: model.safetensors + config.json with `architecture` and `pretrained_cfg`."""
    config = {"architecture": "vit_test_patch8_32", "num_classes": model.config.num_classes, "num_features": 32,
              "global_pool": "token", "model_args": {"num_heads": 2},
              "label_names": [f"class {i}" for i in range(model.config.num_classes)],
              "pretrained_cfg": {"tag": "test", "input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "num_classes": model.config.num_classes}}
    return {"config.json": json.dumps(config).encode(), "model.safetensors": safetensors_bytes(timm_state_dict(model))}


def test_hf_hub_transformers_repository(server):
    model = small_model()
    server.served.hub["google/vit-test"] = hf_repo(model)
    loaded = load_pretrained("hf-hub:google/vit-test")
    assert same_logits(model, loaded)
    assert load_pretrained(f"hf-hub:google/vit-test@{COMMIT}").config.num_classes == 5
    gets = [r for r in server.requests() if r[0] == "GET"]
    assert {r[1].rsplit("/", 1)[1] for r in gets} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert len(gets) == 3  # the second load found every file in huggingface_hub's cache


def test_hf_hub_timm_repository(server):
    model = small_model()
    server.served.hub["timm/vit_test_patch8_32.test"] = timm_repo(model)
    loaded = load_pretrained("hf-hub:timm/vit_test_patch8_32.test")
    assert same_logits(model, loaded)
    record = loaded.preprocessing
    assert (record.normalisation, record.mean, record.std) == ("mean_std", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert loaded.label_names[0] == "class 0"


def test_hf_hub_offline_uses_huggingface_hubs_cache(server, monkeypatch):
    model = small_model()
    server.served.hub["google/vit-test"] = hf_repo(model)
    load_pretrained("hf-hub:google/vit-test")
    count = len(server.requests())
    for var in ("HF_HUB_OFFLINE", "VITLAB_OFFLINE"):
        monkeypatch.setenv(var, "1")
        assert same_logits(model, load_pretrained("hf-hub:google/vit-test"))
        with pytest.raises(CheckpointError, match="offline") as e:
            load_pretrained("hf-hub:google/other")
        assert "\n" not in str(e.value)
        monkeypatch.delenv(var)
    assert len(server.requests()) == count  # offline: not one request


def test_hf_hub_errors_are_one_line(server):
    server.served.hub["google/vit-test"] = {"config.json": b'{"model_type": "vit"}'}
    for spec, message in (("hf-hub:google/missing", "repository not found"),
                          ("hf-hub:google/vit-test@v9", "revision not found"),
                          ("hf-hub:google/vit-test", "has none of model.safetensors, pytorch_model.bin"),
                          ("hf-hub:just-a-name", "expected hf-hub:ORG/NAME")):
        with pytest.raises(CheckpointError, match=message) as e:
            load_pretrained(spec)
        assert "\n" not in str(e.value)


def test_vitlab_download_prints_the_cached_path(server, tmp_path, capsys):
    server.served.files["/m.npz"] = npz_bytes(small_model(gelu="tanh"), tmp_path)
    assert main(["download", server.url("/m.npz"), "--no-progress"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(url_cache_path(server.url("/m.npz")))


def test_models_pretrained_lists_the_names(capsys):
    assert main(["models", "--pretrained", "--filter", "R50"]) == 0
    out = capsys.readouterr().out
    assert "imagenet21k+imagenet2012/R50+ViT-B_16" in out and "384" in out and "85.08" in out
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["checkpoints"]
    assert {"name", "source", "resolution", "imagenet_top1", "url"} <= set(rows[0])


def test_convert_reads_a_url(server, tmp_path):
    model = small_model(gelu="tanh")
    server.served.files["/m.npz"] = npz_bytes(model, tmp_path)
    assert main(["convert", server.url("/m.npz"), str(tmp_path / "out"), "--to", "vitlab"]) == 0
    assert same_logits(model, load_pretrained(tmp_path / "out"))




def test_a_training_config_may_start_from_a_name(tmp_path):
    import training_support as ts
    from vitlab.training.config import load_config

    path = ts.write_config(tmp_path / "c.yaml", ts.tiny_config(tmp_path / "run"))
    for init in ("hf-hub:google/vit-base-patch16-224", "https://example.org/w.npz", "imagenet21k/ViT-B_16"):
        assert load_config(path, [f"model.init={init}"]).model.init == init  # fetched when training starts


def test_cli_reports_a_missing_name_in_one_line(server, capsys):
    assert main(["download", server.url("/none.npz"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "HTTP 404" in err and "\n" not in err and "Traceback" not in err


def test_results_of_a_named_checkpoint_go_to_a_folder_named_after_it():
    from types import SimpleNamespace

    from vitlab.commands.evalargs import output_dir

    args = SimpleNamespace(out=None)
    assert str(output_dir(args, "hf-hub:google/vit-base-patch16-224", "eval")) == "hf-hub_google_vit-base-patch16-224-eval"
    assert str(output_dir(args, "imagenet21k+imagenet2012/ViT-B_16", "eval")) == "imagenet21k_imagenet2012_ViT-B_16-eval"


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vitlab {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_download_refuses_a_name_no_source_knows(tmp_path, capsys):
    for names in (["abc"], ["0"], ["hf-hub-typo:x/y"]):
        assert main(["download", *names]) == 2
        assert f"'{names[0]}': no source knows this name, nothing downloaded" in one_error_line(capsys, "download")
    assert not (tmp_path / "vitlab-cache").exists()


def test_download_fetches_a_data_set_by_its_name(monkeypatch, capsys):
    """`vitlab download cifar10` is what the offline error of `vitlab data cifar10` asks for: it fetches the data
    set (here refused offline, naming the archive it needs) instead of printing the name."""
    monkeypatch.setenv("VITLAB_OFFLINE", "1")
    for command in (["data", "cifar10"], ["download", "cifar10"]):
        assert main(command) == 2
        line = one_error_line(capsys, command[0])
        assert "cifar-10-binary.tar.gz" in line and "`vitlab download`" in line


@pytest.mark.parametrize("answer", ["unreachable", "500"])
def test_an_unreachable_hub_is_one_line_that_says_so(answer, monkeypatch, capsys):
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # huggingface_hub's back-off between its retries
    with LocalServer() as s:
        s.served.hub["google/vit-x"] = {"config.json": b"{}"}
        s.served.behaviours["/google/vit-x/resolve/main/config.json"] = Behaviour(fail_with=500, fails=100)
        monkeypatch.setenv("HF_ENDPOINT", s.base if answer == "500" else "http://127.0.0.1:9")  # 9: nothing
        assert main(["download", "hf-hub:google/vit-x"]) == 2
    line = one_error_line(capsys, "download")
    assert "cannot be reached" in line and "offline mode" not in line


def test_a_page_that_is_no_checkpoint_is_never_cached(server, tmp_path, capsys):
    server.served.files["/m.npz"] = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
    for _ in range(2):  # refused each time, so each time fetched again
        assert main(["download", server.url("/m.npz"), "--no-progress"]) == 2
        line = one_error_line(capsys, "download")
        assert "no checkpoint" in line and "<!DOCTYPE html>" in line and "nothing cached" in line
    assert len(server.requests("/m.npz")) == 2
    cache = tmp_path / "vitlab-cache"
    assert not [p for p in cache.rglob("*") if p.is_file()]
    cached = url_cache_path(server.url("/m.npz"))  # one cached by an earlier vitlab: named, to delete
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"<html></html>")
    assert main(["download", server.url("/m.npz"), "--no-progress"]) == 2
    assert str(cached) in one_error_line(capsys, "download") and len(server.requests("/m.npz")) == 2


@pytest.mark.parametrize("path", ["/x%00.npz", "/w/..", "/w/.", "/%2e%2e"])
def test_odd_url_names_are_one_line_and_leave_no_part_file(path, server, tmp_path, capsys):
    assert main(["download", server.url(path), "--no-progress"]) == 2
    one_error_line(capsys, "download")
    assert not list((tmp_path / "vitlab-cache").rglob("*.part"))
    assert url_cache_path(server.url(path)).name not in ("", ".", "..")
