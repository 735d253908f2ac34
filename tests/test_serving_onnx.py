"""ONNX export (`vitlab convert --to onnx`): onnxruntime parity with the torch model, int8, and `serve --onnx`."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import tiny
from eval_fixtures import one_thread  # noqa: F401  (autouse)
from serving_support import NAMES, image_bytes, predict_raw, serving, tiny_checkpoint
from vitlab import create_model, load_pretrained, save_pretrained
from vitlab.cli import main
from vitlab.serving.engine import OnnxEngine, TorchEngine
from vitlab.checkpoints.onnx import export_onnx, load_session, read_sidecar


@pytest.mark.parametrize("overrides", [dict(), dict(classifier="gap"), dict(representation_size=16, in_chans=1),
                                       dict(image_size=(16, 24), gelu="tanh"), dict(attention="axial"),
                                       dict(posemb="relative", classifier="map", reg_tokens=2),
                                       dict(distill_token=True, layer_scale=0.1)])
def test_onnxruntime_matches_torch_within_1e4(tmp_path, overrides):
    model = create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=overrides.pop("image_size", 16), **overrides))
    torch.nn.init.normal_(model.head.weight, std=0.5)
    path = export_onnx(model, tmp_path / "m.onnx")
    session = load_session(path)
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, model.config.in_chans, *model.config.image_hw)
        with torch.no_grad():
            want = model.eval()(x)
        (got,) = session.run(["logits"], {"pixels": x.numpy()})
        assert got.shape == tuple(want.shape)
        assert abs(torch.from_numpy(got) - want).max() <= 1e-4


def test_convert_command_writes_onnx_int8_and_sidecar(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", width=64, mlp_dim=128)
    assert main(["convert", str(ckpt), str(tmp_path / "fp32.onnx"), "--to", "onnx"]) == 0
    assert main(["convert", str(ckpt), str(tmp_path / "int8.onnx"), "--to", "onnx", "--quantize", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
    side = read_sidecar(tmp_path / "int8.onnx")
    assert side["label_names"] == NAMES and side["precision"] == "int8" and side["image_hw"] == [16, 16]
    assert (tmp_path / "int8.onnx").stat().st_size < (tmp_path / "fp32.onnx").stat().st_size
    model = load_pretrained(ckpt).eval()
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        want = model(x).softmax(1)
    fp32 = OnnxEngine(tmp_path / "fp32.onnx").run(x).probabilities
    int8 = OnnxEngine(tmp_path / "int8.onnx").run(x).probabilities
    assert abs(fp32 - want).max() < 1e-5
    assert abs(int8 - want).max() < 0.1 and (int8.argmax(1) == want.argmax(1)).float().mean() >= 0.8
    assert_no_int16_saturation(tmp_path / "int8.onnx")
    assert main(["convert", str(ckpt), str(tmp_path / "x"), "--to", "timm", "--quantize", "int8"]) == 2


def assert_no_int16_saturation(path):
    """x86 without VNNI adds uint8 x int8 products in pairs in a saturating int16 (VPMADDUBSW): the weights of
    every MatMulInteger must keep a pair below 32767 for any activation up to 255, so that all CPUs agree."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t).astype(int) for t in graph.initializer}
    integer_matmuls = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(integer_matmuls) == 2 * 4 + 1  # qkv, proj, fc1, fc2 per block and the head
    for node in integer_matmuls:
        w = abs(weights[node.input[1]])
        w = w[: len(w) // 2 * 2]
        assert 255 * (w[0::2] + w[1::2]).max() <= 32767, node.name


def test_onnx_is_one_writer_of_the_converters_table(tmp_path):
    from vitlab.checkpoints import CheckpointError, export_checkpoint
    from vitlab.checkpoints.export import WRITERS

    assert "onnx" in WRITERS and WRITERS["onnx"].beside(tmp_path / "m.onnx") == tmp_path / "m.json"
    model = create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=16))
    path = export_checkpoint(model, tmp_path / "folder", "onnx", quantize=None, source=None)
    assert path == tmp_path / "folder" / "model.onnx" and read_sidecar(path)["precision"] == "fp32"
    with pytest.raises(CheckpointError, match="the timm format takes no quantize"):
        export_checkpoint(model, tmp_path / "t", "timm", quantize="int8")


def test_serve_onnx_answers_like_the_torch_model(tmp_path):
    from vitlab.data.preprocessing import Preprocessing
    from vitlab.serving.app import create_app

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    path = export_onnx(load_pretrained(ckpt), tmp_path / "m.onnx", source=ckpt)
    torch_engine, onnx_engine = TorchEngine(ckpt, device="cpu", precision="fp32"), OnnxEngine(path)
    assert isinstance(onnx_engine.preprocessing, Preprocessing)  # typed; a dict only in the sidecar and the card
    assert onnx_engine.preprocessing == torch_engine.preprocessing
    assert onnx_engine.card()["preprocessing"] == torch_engine.card()["preprocessing"]
    data = image_bytes(3)
    with serving(create_app(TorchEngine(ckpt, device="cpu", precision="fp32"))) as port:
        want = predict_raw(port, data)[2][0]["predictions"]
    with serving(create_app(OnnxEngine(path))) as port:
        status, _, got = predict_raw(port, data)
        assert status == 200
        assert [p["label"] for p in got[0]["predictions"]] == [p["label"] for p in want]
        assert [p["probability"] for p in got[0]["predictions"]] == pytest.approx(
            [p["probability"] for p in want], abs=1e-5)
        status, _, body = predict_raw(port, data, "?rollout=base64")
        assert status == 400 and "attention" in body["error"]


def test_onnx_without_its_sidecar_is_refused_in_one_line(tmp_path, capsys):
    path = export_onnx(create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=16)), tmp_path / "m.onnx")
    path.with_suffix(".json").unlink()
    assert main(["serve", "--onnx", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "m.json: missing" in err and len(err.splitlines()) == 1


def test_static_int8_runs_every_weight_matmul_in_int8_and_keeps_the_answers(tmp_path):
    """export_onnx(..., quantize="int8", calibration=...): onnxruntime's static QDQ int8, 7-bit weights."""
    import collections

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = load_pretrained(tiny_checkpoint(tmp_path / "ckpt", width=64, mlp_dim=128)).eval()
    calibration = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    path = export_onnx(model, tmp_path / "static.onnx", quantize="int8", calibration=calibration)
    graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t).astype(int) for t in graph.initializer}
    quantised = [weights[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
                 and weights[n.input[0]].ndim == 2]
    assert len(quantised) == 2 * 4 + 1 and all(abs(w).max() <= 64 for w in quantised)  # 7 bits: no saturation
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] >= 2 * 4 and "MatMulNBits" not in ops, ops
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        want = model(x).softmax(1)
    got = OnnxEngine(path).run(x).probabilities
    assert abs(got - want).max() < 0.1 and (got.argmax(1) == want.argmax(1)).float().mean() >= 0.8


def test_convert_with_calibration_writes_static_int8_and_refuses_bad_data_in_one_line(tmp_path, capsys):
    import onnx

    from training_support import DATA_ROOT, image_folder

    ckpt = tiny_checkpoint(tmp_path / "ckpt", width=64, mlp_dim=128)
    data = f"folder:{image_folder(DATA_ROOT)}"
    out = tmp_path / "static.onnx"
    assert main(["convert", str(ckpt), str(out), "--to", "onnx", "--quantize", "int8", "--calibration", data]) == 0
    assert "int8 static" in capsys.readouterr().out
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        want = load_pretrained(ckpt).eval()(x).softmax(1)
    assert (OnnxEngine(out).run(x).probabilities.argmax(1) == want.argmax(1)).float().mean() >= 0.8
    for bad in (["--quantize", "int8", "--calibration", f"folder:{tmp_path / 'absent'}"], ["--calibration", data]):
        assert main(["convert", str(ckpt), str(tmp_path / "x.onnx"), "--to", "onnx", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
