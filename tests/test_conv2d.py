"""1-D convolutions run as 2-D ones (server/conv2d.py): the same audio, every convolution
rewritten, and graphs the rewrite must leave alone left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from voicegen import SPEAKERS, write_vits_voice

from server import conv2d, graph
from server.voices import bundled_voice


def _run(model: onnx.ModelProto | str, feeds: dict) -> list[np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _snr_db(audio: np.ndarray, reference: np.ndarray) -> float:
    noise = np.sum((audio.astype(np.float64) - reference) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)


def _one_d_convolutions(model: onnx.ModelProto) -> int:
    weights = {w.name: len(w.dims) for w in model.graph.initializer}
    return sum(1 for n in model.graph.node
               if n.op_type in ("Conv", "ConvTranspose") and weights.get(n.input[1]) == 3)


def _piper_feeds(ids: list[int], sid: int | None = None) -> dict:
    feeds = {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
             "scales": np.array([0.0, 1.0, 0.0], np.float32)}  # deterministic: no noise
    if sid is not None:
        feeds["sid"] = np.array([sid], np.int64)
    return feeds


def test_the_bundled_voice_gives_the_same_audio_with_every_convolution_in_2d(tmp_path):
    path = str(bundled_voice().model_path)
    original = onnx.load(path)
    convolutions = _one_d_convolutions(original)
    loaded = graph.load(path, split_decoder=False, cache_dir=tmp_path)
    rewritten = onnx.load(loaded.model)
    assert convolutions > 100 and _one_d_convolutions(rewritten) == 0
    ids = [1, 0, 20, 59, 100, 3, 121, 25, 0, 50, 3, 14, 61, 3, 35, 120, 2]
    reference = _run(path, _piper_feeds(ids))[0]
    audio = _run(loaded.model, _piper_feeds(ids))[0]
    # Same length (the durations round to the same frames) and the same samples to float rounding.
    assert audio.shape == reference.shape
    assert _snr_db(audio, reference) >= 80


def test_the_split_graphs_of_a_multi_speaker_voice_are_rewritten_and_keep_each_speaker(tmp_path):
    path = str(write_vits_voice(tmp_path, "tiny_vits", SPEAKERS))
    split = graph.load(path, cache_dir=tmp_path / "cache")
    assert isinstance(split, graph.SplitGraph)
    for part in (split.encoder, split.decoder):
        assert _one_d_convolutions(onnx.load(part)) == 0
    encoder = ort.InferenceSession(split.encoder, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(split.decoder, providers=["CPUExecutionProvider"])
    for sid in SPEAKERS.values():
        feeds = _piper_feeds([1, 5, 9, 2], sid)
        z, *rest = encoder.run([split.latent, split.speaker], feeds)
        audio = decoder.run(None, {split.latent: z, split.speaker: rest[-1]})[0]
        np.testing.assert_allclose(audio.reshape(-1), _run(path, feeds)[0].reshape(-1), atol=1e-5)


def test_no_conv_2d_keeps_the_graphs_own_convolutions_in_a_folder_of_its_own(tmp_path):
    path = str(write_vits_voice(tmp_path, "plain_vits"))
    own = graph.load(path, cache_dir=tmp_path / "cache", conv_2d=False)
    rewritten = graph.load(path, cache_dir=tmp_path / "cache")
    assert _one_d_convolutions(onnx.load(own.decoder)) == 2  # conv_pre and the upsampling
    assert _one_d_convolutions(onnx.load(rewritten.decoder)) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 2


def _conv_model(opset: int, shared_weight: bool = False) -> onnx.ModelProto:
    """x [1, 3, L] -> dilated Conv -> LeakyRelu -> strided ConvTranspose with output_padding (-> Conv)."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 2, 7)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[5], dilations=[2], pads=[4, 4]),
             helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.1),
             helper.make_node("ConvTranspose", ["a", "w2", "b2"], ["y"], kernel_shape=[7], strides=[3],
                              pads=[2, 1], output_padding=[1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, None])]
    if shared_weight:  # a second node on w1: the rewrite must not reshape a weight another node reads
        nodes.append(helper.make_node("Conv", ["x", "w1"], ["y2"], kernel_shape=[5], pads=[2, 2]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, None]))
    g = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None])],
                          outputs, [w1, w2, b2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_strides_dilations_pads_and_output_padding_carry_over_in_every_opset(opset):
    model = _conv_model(opset)
    x = np.random.default_rng(4).standard_normal((1, 3, 40)).astype(np.float32)
    reference = _run(model, {"x": x})
    assert conv2d.rewrite(model) == 2
    onnx.checker.check_model(model, full_check=True)
    result = _run(model, {"x": x})
    assert result[0].shape == reference[0].shape
    np.testing.assert_allclose(result[0], reference[0], rtol=1e-4, atol=1e-4)


def test_a_shared_weight_and_a_graph_without_convolutions_are_left_alone():
    model = _conv_model(17, shared_weight=True)
    x = np.random.default_rng(4).standard_normal((1, 3, 40)).astype(np.float32)
    reference = _run(model, {"x": x})
    assert conv2d.rewrite(model) == 1  # the ConvTranspose; both Convs read the shared w1
    for got, want in zip(_run(model, {"x": x}), reference):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]))
    before = plain.SerializeToString()
    assert conv2d.rewrite(plain) == 0 and plain.SerializeToString() == before


def test_a_rewrite_onnx_runtime_refuses_falls_back_to_the_graphs_own_convolutions(tmp_path, monkeypatch, caplog):
    from server.config import Settings
    from server.inference import Scales
    from server.pool import VoiceSessions
    from server.voices import VoiceRegistry

    real = conv2d.rewrite

    def refused(model):  # a rewrite whose graph ONNX Runtime cannot load
        done = real(model)
        model.graph.node.append(helper.make_node("NoSuchOperator", [model.graph.output[0].name], ["unused"]))
        return done

    monkeypatch.setattr(conv2d, "rewrite", refused)
    path = write_vits_voice(tmp_path, "refused_vits")
    voice = next(v for v in VoiceRegistry.load(tmp_path, "") if v.name == "refused_vits")
    sessions = VoiceSessions(voice, Settings(port=0, graph_cache=tmp_path / "cache", sessions=2))
    assert "did not load" in caplog.text and "refused_vits" in caplog.text
    assert sessions.split and len(sessions.slots) == 2
    ids = [1, 5, 9, 2]
    encoded = sessions.encode(ids, Scales(0.0, 1.0, 0.0), 0)
    audio = sessions.decode(encoded, 0, encoded.frames)
    np.testing.assert_allclose(audio, _run(str(path), _piper_feeds(ids))[0].reshape(-1), atol=1e-5)
