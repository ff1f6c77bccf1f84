"""A Piper (VITS) voice graph split where its audio decoder begins, found by structure.

The graphs are made once per model and kept as files (load()).

A VITS graph runs, in one call: the text encoder and duration predictor (on
phoneme ids), the flow (on latent frames) and the HiFi-GAN decoder (latent
frames -> audio, hop samples per frame). The decoder is two thirds of the
compute and purely convolutional, so it can run on windows of latent frames
as they are needed, while the rest runs once per segment. At load time the
graph is cut at the decoder's input into:

- an encoder graph: the voice's inputs -> the latent z [1, C, frames], the
  per-id durations in frames (when the graph has them) and, for
  multi-speaker voices, the speaker embedding g the decoder is conditioned on;
- a decoder graph: a window of z (and g) -> its audio.

The decoder is recognised by what it is, not by node names: the first
upsampling (ConvTranspose) node, reached backwards through element-wise
activations, sums and products to the convolution that starts the decoder
("conv_pre"); that convolution's input is z, and any other input of the
decoder (the speaker conditioning) is a tensor that does not depend on the
text. The durations are the output of the graph's one Ceil node (the
duration predictor's frames per id, rounded up as VITS does before it
expands the ids into frames). A graph with neither shape runs whole.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from server import conv2d

if TYPE_CHECKING:
    import onnx

# `onnx` (14 MB of memory once imported) is imported only where a model is
# parsed: a server whose graphs are already in the cache never needs it.

# Ops a value passes through unchanged in kind between conv_pre and the first
# upsampling: the activation, and the sum with the speaker conditioning.
_PASS_THROUGH = frozenset({"LeakyRelu", "Relu", "Add", "Mul", "Identity"})
_TEXT_INPUT = "input"


class NotSplittable(Exception):
    """The graph has no recognisable decoder; the message says what is missing."""


@dataclass(frozen=True)
class SplitGraph:
    """The files of the two graphs of a split voice, and their tensor names."""

    encoder: str
    decoder: str
    latent: str
    """Encoder output and decoder input: z, [1, channels, frames]."""
    speaker: Optional[str]
    """Encoder output and decoder input conditioning the decoder on the speaker (None: single speaker)."""
    durations: Optional[str]
    """Encoder output: frames per phoneme id (None: the graph has no duration tensor)."""


@dataclass(frozen=True)
class WholeGraph:
    """A voice that runs as one graph, with its durations exposed when it has them."""

    model: str
    """The file to run: the voice's own, or a copy with the durations as an extra output."""
    durations: Optional[str]
    reason: str
    """Why the graph was not split."""


def load(model_path: str, split_decoder: bool = True, cache_dir: Optional[Path] = None,
         conv_2d: bool = True) -> SplitGraph | WholeGraph:
    """Split the voice at `model_path` (unless `split_decoder` is False), or return it
    whole with the reason it was not split; durations are exposed either way, and
    with `conv_2d` its 1-D convolutions run as 2-D ones (server/conv2d.py).

    The graphs made are written as files under `cache_dir`, in a folder named
    after the model's sha256 (and read from there on later loads): ONNX
    Runtime then loads them from files, so nothing keeps a copy of the model
    in memory besides the sessions' weights. Without a usable `cache_dir`
    they go to a temporary folder of this process.
    """
    folder = _cache_folder(model_path, cache_dir, conv_2d)
    manifest = _read_manifest(folder)
    if manifest is None:
        manifest = _make(model_path, folder, conv_2d)
    durations = manifest["durations"]
    if split_decoder and manifest["split"]:
        return SplitGraph(str(folder / _ENCODER), str(folder / _DECODER), manifest["latent"],
                          manifest["speaker"], durations)
    reason = manifest["reason"] if not manifest["split"] else "decoder windows are turned off (--no-decoder-windows)"
    rewritten = durations or conv_2d
    if rewritten and not (folder / _WHOLE).exists():
        import onnx

        partial = folder / f".{_WHOLE}.{os.getpid()}"
        onnx.save(_whole(onnx.load(model_path), durations, conv_2d), str(partial))
        partial.replace(folder / _WHOLE)
    return WholeGraph(str(folder / _WHOLE) if rewritten else model_path, durations, reason)


def _make(model_path: str, folder: Path, conv_2d: bool) -> dict:
    """Split the model (or note why not), write the graphs and a manifest into `folder`."""
    import onnx

    model = onnx.load(model_path)
    durations = find_durations(model.graph)
    manifest: dict = {"format": _FORMAT, "durations": durations, "split": False, "reason": "",
                      "latent": None, "speaker": None}
    files: dict[str, onnx.ModelProto] = {}
    try:
        latent, speaker = find_decoder_input(model.graph)
        files[_ENCODER], files[_DECODER] = split(model, latent, speaker, durations)
        manifest.update(split=True, latent=latent, speaker=speaker)
    except NotSplittable as exc:
        manifest["reason"] = str(exc)
        if durations or conv_2d:
            files[_WHOLE] = _whole(model, durations, conv_2d)
    if conv_2d:
        for part in (_ENCODER, _DECODER):
            if part in files:
                conv2d.rewrite(files[part])
    _write(folder, files, manifest)
    return manifest


def _whole(model: onnx.ModelProto, durations: Optional[str], conv_2d: bool) -> onnx.ModelProto:
    """The graph to run whole: `model` with its durations as an output, its convolutions in 2-D."""
    whole = _with_outputs(model, [durations] if durations else [])
    if conv_2d:
        conv2d.rewrite(whole)
    return whole


def split(model: onnx.ModelProto, latent: str, speaker: Optional[str],
          durations: Optional[str]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Cut `model` at `latent` (and `speaker`) into an encoder and a decoder graph."""
    import onnx.shape_inference
    import onnx.utils

    graph_inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output][:1]
    known = {v.name for v in model.graph.value_info}
    if not {latent, speaker, durations} - {None} <= known:
        # The extractor needs the cut tensors' types; exporters usually record them.
        model = onnx.shape_inference.infer_shapes(model)
    extractor = onnx.utils.Extractor(model)
    extras = [speaker] if speaker else []
    encoder = extractor.extract_model(graph_inputs, [latent, *([durations] if durations else []), *extras])
    decoder = extractor.extract_model([latent, *extras], outputs)
    return encoder, decoder


_FORMAT = 1  # raised whenever what load() writes changes, so older folders are not read
_ENCODER, _DECODER, _WHOLE, _MANIFEST = "encoder.onnx", "decoder.onnx", "whole.onnx", "graph.json"
_LOGGER = logging.getLogger(__name__)
_fallback_dir: Optional[Path] = None


def _cache_folder(model_path: str, cache_dir: Optional[Path], conv_2d: bool) -> Path:
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return _usable_dir(cache_dir) / f"{digest.hexdigest()[:32]}-v{_FORMAT}{'-conv2d' if conv_2d else ''}"


def _usable_dir(cache_dir: Optional[Path]) -> Path:
    """`cache_dir` if it can be written, else one temporary folder for this process."""
    global _fallback_dir
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            if os.access(cache_dir, os.W_OK):
                return cache_dir
        except OSError:
            pass
        _LOGGER.warning("cannot write the graph cache %s; split graphs go to a temporary folder", cache_dir)
    if _fallback_dir is None:
        _fallback_dir = Path(tempfile.mkdtemp(prefix="speakstream-graphs-"))
        atexit.register(shutil.rmtree, _fallback_dir, True)
    return _fallback_dir


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == _FORMAT else None


def _write(folder: Path, files: dict[str, onnx.ModelProto], manifest: dict) -> None:
    """Write into a fresh folder, then rename it into place: a reader sees all or nothing."""
    import onnx

    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    for name, model in files.items():
        onnx.save(model, str(partial / name))
    (partial / _MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    try:
        partial.rename(folder)
    except OSError:  # another process made it meanwhile: theirs is as good
        shutil.rmtree(partial, ignore_errors=True)


def find_decoder_input(graph: onnx.GraphProto) -> tuple[str, Optional[str]]:
    """(z, g): the decoder's latent input and its speaker input (None for one speaker).

    :raises NotSplittable: no upsampling node, no convolution before it, or a
        decoder that reads more of the text than z.
    """
    producers = {out: node for node in graph.node for out in node.output}
    textual = _computed_from(graph, _TEXT_INPUT)
    first_up = next((n for n in graph.node if n.op_type == "ConvTranspose"), None)
    if first_up is None:
        raise NotSplittable("no upsampling (ConvTranspose) node, so no audio decoder to run in windows")
    latent = _conv_before(first_up.input[0], producers, textual).input[0]
    outside = _decoder_inputs(graph, producers, latent)
    text_fed = [t for t in outside if t in textual]
    if text_fed:
        raise NotSplittable(f"the decoder reads {text_fed[0]!r} besides its latent input {latent!r}")
    if len(outside) > 1:
        raise NotSplittable(f"the decoder has several conditioning inputs: {outside}")
    return latent, (outside[0] if outside else None)


def _conv_before(tensor: str, producers: dict, textual: set[str]) -> onnx.NodeProto:
    """The convolution that starts the decoder: walked back from the first upsampling's
    input through pass-through ops, following the one branch that carries the text."""
    node = producers.get(tensor)
    while node is not None and node.op_type in _PASS_THROUGH:
        branches = [t for t in node.input if t in textual]
        if len(branches) != 1:
            raise NotSplittable(f"{node.op_type} node {node.name!r} before the first upsampling "
                                f"mixes {len(branches)} text-dependent inputs")
        node = producers.get(branches[0])
    if node is None or node.op_type != "Conv":
        raise NotSplittable("no convolution starts the decoder before its first upsampling")
    return node


def _decoder_inputs(graph: onnx.GraphProto, producers: dict, latent: str) -> list[str]:
    """Tensors the decoder (what the audio output needs, back to `latent`) takes from
    outside itself: graph inputs or values computed without `latent`, other than
    initializers and constants, which go with whichever graph needs them."""
    initializers = {i.name for i in graph.initializer}
    in_decoder = _computed_from(graph, latent)
    needed: list[str] = []
    queue, seen = deque(o.name for o in graph.output[:1]), {latent}
    while queue:
        tensor = queue.popleft()
        if tensor in seen or tensor in initializers or not tensor:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if tensor in in_decoder and node is not None:  # computed from the latent: a node made it
            queue.extend(node.input)
        elif node is None or node.input:  # a graph input, or a value computed before the decoder
            needed.append(tensor)
    return needed


def _computed_from(graph: onnx.GraphProto, source: str) -> set[str]:
    """Every tensor computed (directly or not) from `source`; ONNX keeps nodes in
    topological order, so one pass finds them."""
    reached = {source}
    for node in graph.node:
        if any(t in reached for t in node.input):
            reached.update(node.output)
    return reached


def has_durations(model_path: str, cache_dir: Optional[Path], conv_2d: bool = True) -> bool:
    """Whether the voice at `model_path` has a duration tensor: from its cached manifest
    when there is one, else from its graph (parsed, a fraction of a second)."""
    manifest = _read_manifest(_cache_folder(model_path, cache_dir, conv_2d))
    if manifest is not None:
        return bool(manifest["durations"])
    import onnx

    return find_durations(onnx.load(model_path).graph) is not None


def find_durations(graph: onnx.GraphProto) -> Optional[str]:
    """The duration predictor's frames per id: the output of the graph's only Ceil node
    computed from the text (VITS rounds durations up before expanding ids to frames)."""
    textual = _computed_from(graph, _TEXT_INPUT)
    ceils = [n for n in graph.node if n.op_type == "Ceil" and n.output[0] in textual]
    return ceils[0].output[0] if len(ceils) == 1 else None


def _with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` with `names` added as graph outputs (after the audio)."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    return copy
