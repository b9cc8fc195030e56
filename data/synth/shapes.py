"""The built-in video-audio-text corpus: moving coloured shapes that sound like what they are.

``python -m data.synth.shapes --out DIR --num-train N --num-val M --seed S`` writes real mp4 files
(H.264 video, AAC audio) and ``train.jsonl`` / ``val.jsonl`` manifests in the format every corpus uses,
so the pretraining and retrieval code cannot tell it from a user's data.

Each video is one 3.2 s clip (32 frames at 10 fps, 112x112, 16 kHz mono audio) holding 1-3 objects over
a dark or light background that is plain, checkered, striped or speckled. Every object has a colour, a
shape, a size, a direction and a speed, and makes a sound tied to them:

- colour -> pitch (eight notes a minor third apart), shape -> timbre (sine, square, sawtooth, FM bell,
  pulse train, beating octave), size -> loudness, speed -> pulse rate of the note (2 or 6 per second),
  direction -> pitch contour (rising for up, falling for down, vibrato for left, steady for right);
- the background tone sets the colour of the background noise (rumble when dark, hiss when light).

Five captions per video (VATT's number of MIL-NCE positives), each from a different template with its
own synonyms and word order, carry timestamps inside the clip (so MIL-NCE has neighbours in time) and
name every object's colour, shape, size, motion and speed plus the background. Generation is
deterministic for a seed (each clip has its own random stream, whatever the worker order), resumable
(finished mp4s are kept) and marked complete by ``corpus.json``, written last.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.files import atomic_write_json, atomic_write_text
from data.synth.mediawriter import write_mp4
from data.transforms import PreprocessConfig

logger = logging.getLogger(__name__)

VERSION = 2  # bump when the generated content changes; a cached corpus of another version is rebuilt
MARKER = "corpus.json"
PARTIAL = "corpus.partial.json"  # parameters of a run in progress, so a resume can check them
FPS = 10.0
NUM_FRAMES = 32  # 3.2 s
SIZE = 112
SAMPLE_RATE = 16000
CAPTION_WINDOWS = ((0.0, 1.6), (0.8, 2.4), (1.6, 3.2), (0.0, 3.2), (0.4, 2.8))  # one per MIL-NCE positive

# name -> (RGB, pitch in Hz): saturated, well separated hues; notes a minor third apart.
COLOURS: dict[str, tuple[tuple[int, int, int], float]] = {
    "red": ((230, 25, 25), 262.0),
    "orange": ((255, 135, 0), 311.0),
    "yellow": ((245, 225, 20), 370.0),
    "green": ((25, 185, 40), 440.0),
    "cyan": ((20, 210, 225), 523.0),
    "blue": ((35, 65, 235), 622.0),
    "purple": ((145, 40, 205), 740.0),
    "pink": ((250, 90, 180), 880.0),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = {"slow": 12.0, "fast": 34.0}  # pixels per second at 112x112
PULSES = {"slow": 2.0, "fast": 6.0}  # note pulses per second
SIZES = {"small": 12.0, "large": 20.0}  # radius in pixels
LOUDNESS = {"small": 0.16, "large": 0.32}
TONES = {"dark": 45.0, "light": 200.0}
PATTERNS = ("plain", "checkered", "striped", "speckled")
COUNT_WEIGHTS = (0.5, 0.35, 0.15)  # 1, 2 or 3 objects

# Words for the captions: several per factor, so the text tower has to learn synonyms.
SHAPE_WORDS = {
    "circle": ["circle", "disc", "ball"],
    "square": ["square", "box"],
    "triangle": ["triangle"],
    "star": ["star"],
    "cross": ["cross", "plus sign"],
    "ring": ["ring", "hoop"],
}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
MOTION_WORDS = {
    "left": ["moving left", "drifting left", "sliding leftward", "heading left"],
    "right": ["moving right", "drifting right", "sliding rightward", "heading right"],
    "up": ["moving up", "rising", "floating upward", "climbing"],
    "down": ["moving down", "falling", "sinking", "dropping"],
}
SPEED_WORDS = {"slow": ["slowly", "gently", "lazily"], "fast": ["quickly", "fast", "rapidly"]}
SPEED_ADJ = {"slow": ["slow", "sluggish"], "fast": ["fast", "speedy", "quick"]}
TONE_WORDS = {"dark": ["dark", "dim", "black"], "light": ["light", "pale", "bright"]}
PATTERN_WORDS = {
    "plain": ["plain", "flat", "uniform"],
    "checkered": ["checkered", "checkerboard", "chequered"],
    "striped": ["striped", "stripy", "lined"],
    "speckled": ["speckled", "grainy", "noisy"],
}
BACKGROUND_WORDS = ["background", "backdrop"]
SCENE_TEMPLATES = (
    "{objs} on a {tone} {pattern} {bg}",
    "a {tone} {pattern} {bg} with {objs}",
    "{objs}; the {bg} is {pattern} and {tone}",
    "over a {pattern} {tone} {bg}, {objs}",
    "{objs} against a {tone} {pattern} {bg}",
    "{tone} {pattern} {bg}: {objs}",
)
OBJECT_TEMPLATES = (
    "a {size} {colour} {shape} {motion} {speed}",
    "a {colour} {shape}, {size}, {motion} {speed}",
    "a {speed_adj} {size} {colour} {shape} {motion}",
    "a {size} {shape} in {colour} {motion} {speed}",
)
JOINERS_2 = ("{a} and {b}", "{a} while {b}", "{a}, and {b}", "{a} as {b}")
JOINERS_3 = ("{a}, {b} and {c}", "{a}, {b}, and {c}", "{a} while {b} and {c}")


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str
    direction: str
    speed: str
    x0: float  # start position in pixels (the frame wraps around)
    y0: float
    phase: float  # audio pulse phase in radians


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    tone: str
    pattern: str


def sample_scene(rng: np.random.Generator, size: int = SIZE) -> Scene:
    """Draw the factors of one clip; objects in a clip have different colours so captions are unambiguous."""
    count = int(rng.choice(len(COUNT_WEIGHTS), p=COUNT_WEIGHTS)) + 1
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    objects = tuple(
        ShapeObject(
            colour=str(c),
            shape=str(rng.choice(SHAPES)),
            size=str(rng.choice(list(SIZES))),
            direction=str(rng.choice(list(DIRECTIONS))),
            speed=str(rng.choice(list(SPEEDS))),
            x0=float(rng.uniform(0, size)),
            y0=float(rng.uniform(0, size)),
            phase=float(rng.uniform(0, 2 * np.pi)),
        )
        for c in colours
    )
    return Scene(objects, str(rng.choice(list(TONES))), str(rng.choice(PATTERNS)))


def _pick(rng: np.random.Generator, words: list[str] | tuple[str, ...]) -> str:
    return str(words[int(rng.integers(len(words)))])


def describe_object(obj: ShapeObject, template: str, rng: np.random.Generator) -> str:
    return template.format(
        size=_pick(rng, SIZE_WORDS[obj.size]),
        colour=obj.colour,
        shape=_pick(rng, SHAPE_WORDS[obj.shape]),
        motion=_pick(rng, MOTION_WORDS[obj.direction]),
        speed=_pick(rng, SPEED_WORDS[obj.speed]),
        speed_adj=_pick(rng, SPEED_ADJ[obj.speed]),
    )


def make_captions(scene: Scene, rng: np.random.Generator, k: int = len(CAPTION_WINDOWS)) -> list[str]:
    """``k`` captions from different scene templates, each naming every factor of the clip."""
    scene_templates = rng.permutation(len(SCENE_TEMPLATES))[:k]
    captions = []
    for t in scene_templates:
        order = rng.permutation(len(scene.objects))  # objects in a different order each time
        parts = [describe_object(scene.objects[i], _pick(rng, OBJECT_TEMPLATES), rng) for i in order]
        if len(parts) == 1:
            objs = parts[0]
        elif len(parts) == 2:
            objs = _pick(rng, JOINERS_2).format(a=parts[0], b=parts[1])
        else:
            objs = _pick(rng, JOINERS_3).format(a=parts[0], b=parts[1], c=parts[2])
        text = SCENE_TEMPLATES[t].format(
            objs=objs,
            tone=_pick(rng, TONE_WORDS[scene.tone]),
            pattern=_pick(rng, PATTERN_WORDS[scene.pattern]),
            bg=_pick(rng, BACKGROUND_WORDS),
        )
        captions.append(re.sub(r"\ba (?=[aeio])", "an ", text))  # "an orange"
    return captions


def _background(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """A static (H, W, 3) float background: a muted tint of the tone with the scene's pattern."""
    base = TONES[scene.tone] + rng.uniform(-12, 12, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if scene.pattern == "plain":
        texture = 6.0 * (yy / size - 0.5)  # a faint gradient
    elif scene.pattern == "checkered":
        cell = rng.uniform(10, 18)
        texture = 22.0 * (((xx // cell) + (yy // cell)) % 2 * 2 - 1)
    elif scene.pattern == "striped":
        period, angle = rng.uniform(12, 20), rng.uniform(0, np.pi)
        texture = 22.0 * np.sign(np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period))
    else:  # speckled: smoothed noise
        noise = rng.normal(size=(size // 4 + 1, size // 4 + 1))
        texture = 20.0 * np.kron(noise, np.ones((4, 4)))[:size, :size]
    return np.clip(base[None, None, :] + texture[..., None], 0, 255)


def _shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) of a shape of radius ``r`` centred at the origin."""
    rho = np.hypot(dx, dy)
    if shape == "circle":
        return rho - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "triangle":  # pointing up; inradius 0.6 r (a bit larger than inscribed, to match the others)
        normals = [(0.0, 1.0), (0.866, -0.5), (-0.866, -0.5)]
        return np.max([nx * dx + ny * dy for nx, ny in normals], axis=0) - 0.6 * r
    if shape == "star":
        theta = np.arctan2(dy, dx) + np.pi / 2
        return rho - r * (0.42 + 0.58 * ((1 + np.cos(5 * theta)) / 2) ** 2)
    if shape == "cross":
        w = 0.33 * r
        arm_h = np.maximum(np.abs(dx) - r, np.abs(dy) - w)
        arm_v = np.maximum(np.abs(dx) - w, np.abs(dy) - r)
        return np.minimum(arm_h, arm_v)
    if shape == "ring":
        return np.abs(rho - 0.72 * r) - 0.28 * r
    raise ValueError(f"unknown shape {shape!r}")


def render_video(
    scene: Scene, rng: np.random.Generator, size: int = SIZE, num_frames: int = NUM_FRAMES, fps: float = FPS
) -> np.ndarray:
    """The clip as uint8 (T, H, W, 3); objects move in straight lines and wrap around the frame."""
    background = _background(scene, rng, size).astype(np.float32)
    frames = np.broadcast_to(background, (num_frames, size, size, 3)).copy()
    t = np.arange(num_frames)[:, None, None] / fps  # (T, 1, 1)
    tt = np.arange(num_frames)[:, None, None]
    for obj in scene.objects:
        radius = SIZES[obj.size]
        vx, vy = DIRECTIONS[obj.direction]
        cx = obj.x0 + vx * SPEEDS[obj.speed] * t  # (T, 1, 1)
        cy = obj.y0 + vy * SPEEDS[obj.speed] * t
        # Draw on a patch around the object only; indices taken modulo the frame size so an object
        # leaving one side enters the other.
        offsets = np.arange(-int(radius) - 2, int(radius) + 3)
        xs = np.floor(cx).astype(int) + offsets[None, None, :]  # (T, 1, P)
        ys = np.floor(cy).astype(int) + offsets[None, :, None]  # (T, P, 1)
        dist = _shape_distance(obj.shape, xs - cx, ys - cy, radius)  # (T, P, P)
        alpha = np.clip(0.5 - dist, 0, 1)[..., None].astype(np.float32)
        colour = np.array(COLOURS[obj.colour][0], dtype=np.float32)
        idx = (tt, ys % size, xs % size)
        frames[idx] = frames[idx] * (1 - alpha) + colour * alpha
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _timbre(shape: str, phase: np.ndarray) -> np.ndarray:
    if shape == "circle":  # pure tone
        return np.sin(phase)
    if shape == "square":  # odd harmonics: hollow, buzzy
        return sum(np.sin(n * phase) / n for n in (1, 3, 5, 7, 9)) * 0.9
    if shape == "triangle":  # sawtooth: all harmonics, bright
        return sum(np.sin(n * phase) / n for n in range(1, 9)) * 0.7
    if shape == "star":  # FM bell: inharmonic shimmer
        return np.sin(phase + 2.0 * np.sin(3.5 * phase))
    if shape == "cross":  # narrow pulse train
        return np.cos(phase) ** 15
    if shape == "ring":  # octave pair with slow beating
        return 0.6 * np.sin(phase) + 0.6 * np.sin(2.01 * phase)
    raise ValueError(f"unknown shape {shape!r}")


def render_audio(scene: Scene, rng: np.random.Generator, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 audio in [-1, 1]: one pulsed note per object plus background noise."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    mix = np.zeros(n)
    for obj in scene.objects:
        f0 = COLOURS[obj.colour][1]
        if obj.direction == "up":
            semitones = 2.0 * t / seconds
        elif obj.direction == "down":
            semitones = -2.0 * t / seconds
        elif obj.direction == "left":
            semitones = 0.4 * np.sin(2 * np.pi * 5.0 * t)
        else:
            semitones = np.zeros(n)
        freq = f0 * 2.0 ** (semitones / 12)
        phase = 2 * np.pi * np.cumsum(freq) / sample_rate + rng.uniform(0, 2 * np.pi)
        envelope = ((1 + np.cos(2 * np.pi * PULSES[obj.speed] * t + obj.phase)) / 2) ** 2
        mix += LOUDNESS[obj.size] * envelope * _timbre(obj.shape, phase)
    noise = rng.normal(size=n)
    if scene.tone == "dark":  # rumble: a one-pole low-pass
        noise = _one_pole(noise, 0.97)
    else:  # hiss: first difference
        noise = np.diff(noise, prepend=0.0)
    mix += 0.03 * noise / (noise.std() + 1e-12)
    peak = np.abs(mix).max()
    if peak > 0.95:
        mix *= 0.95 / peak
    return mix.astype(np.float32)


def _one_pole(x: np.ndarray, a: float) -> np.ndarray:
    """y[n] = a * y[n-1] + x[n], vectorised through a geometric-kernel convolution (truncated)."""
    kernel = a ** np.arange(int(np.ceil(np.log(1e-4) / np.log(a))))
    return np.convolve(x, kernel)[: x.shape[0]]


def labels_for(scene: Scene) -> list[str]:
    """Factor labels, e.g. for linear probes: count, background and each object's attributes."""
    out = [f"count:{len(scene.objects)}", f"background:{scene.tone}-{scene.pattern}"]
    for o in scene.objects:
        out += [f"colour:{o.colour}", f"shape:{o.shape}", f"size:{o.size}", f"motion:{o.direction}"]
        out.append(f"speed:{o.speed}")
    return list(dict.fromkeys(out))


_SPLIT_CODES = {"train": 0, "val": 1}


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Each clip's own random stream: the corpus does not depend on worker count or order."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def make_clip(out: Path, split: str, index: int, seed: int) -> dict[str, Any]:
    """Generate (or find, when resuming) one clip; returns its manifest row."""
    rng = clip_rng(seed, split, index)
    scene = sample_scene(rng)
    captions = make_captions(scene, rng)
    rel = f"{split}/{index:06d}.mp4"
    path = out / rel
    if not path.exists():  # files are renamed into place complete, so an existing one is finished
        frames = render_video(scene, rng)
        audio = render_audio(scene, rng, NUM_FRAMES / FPS)
        write_mp4(path, frames, FPS, audio, SAMPLE_RATE, crf=20)
    return {
        "media": rel,
        "id": f"{split}_{index:06d}",
        "captions": [{"text": c, "start": s, "end": e} for c, (s, e) in zip(captions, CAPTION_WINDOWS)],
        "labels": labels_for(scene),
    }


def _make_clip_job(job: tuple[str, str, int, int]) -> dict[str, Any]:
    out, split, index, seed = job
    return make_clip(Path(out), split, index, seed)


def _params(num_train: int, num_val: int, seed: int) -> dict[str, Any]:
    return {
        "generator": "data.synth.shapes",
        "version": VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "fps": FPS,
        "num_frames": NUM_FRAMES,
        "size": SIZE,
        "sample_rate": SAMPLE_RATE,
    }


def is_complete(out: str | Path, num_train: int, num_val: int, seed: int) -> bool:
    """True if ``out`` holds a finished corpus made with these parameters."""
    return _read_json(Path(out) / MARKER) == _params(num_train, num_val, seed)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _clear(out: Path) -> None:
    """Remove what :func:`generate` writes (and nothing else) from ``out``."""
    for split in _SPLIT_CODES:
        for f in (out / split).glob("[0-9][0-9][0-9][0-9][0-9][0-9].mp4"):
            f.unlink()
        (out / f"{split}.jsonl").unlink(missing_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    (out / PARTIAL).unlink(missing_ok=True)


def generate(
    out: str | Path,
    num_train: int = 2000,
    num_val: int = 256,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the corpus to ``out`` (``train.jsonl``, ``val.jsonl``, ``train/``, ``val/``); returns ``out``.

    Does nothing if a finished corpus with the same parameters is there. Clips depend only on (seed,
    split, index), so an interrupted run is resumed and a corpus with other counts but the same seed
    and version is extended or cut in place. One made with another seed or generator version is
    replaced (only the files this generator writes are removed).
    """
    out = Path(out)
    params = _params(num_train, num_val, seed)
    if is_complete(out, num_train, num_val, seed):
        logger.info("shapes corpus already complete in %s", out)
        return out
    for name in (MARKER, PARTIAL):
        old = _read_json(out / name)
        if old is not None and any(old.get(k) != params[k] for k in ("generator", "version", "seed")):
            logger.warning("replacing the shapes corpus in %s (made with %s)", out, old)
            _clear(out)
            break
    (out / MARKER).unlink(missing_ok=True)
    for split in _SPLIT_CODES:
        (out / split).mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PARTIAL, params)
    jobs = [(str(out), "train", i, seed) for i in range(num_train)]
    jobs += [(str(out), "val", i, seed) for i in range(num_val)]
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    bar = tqdm(total=len(jobs), desc="shapes corpus", unit="clip", disable=not progress)
    if workers <= 1:
        results = map(_make_clip_job, jobs)
        for job, row in zip(jobs, results):
            rows[(job[1], job[2])] = row
            bar.update()
    else:
        with mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers) as pool:
            for job, row in zip(jobs, pool.imap(_make_clip_job, jobs, chunksize=8)):
                rows[(job[1], job[2])] = row
                bar.update()
    bar.close()
    for split, count in (("train", num_train), ("val", num_val)):
        lines = [json.dumps(rows[(split, i)]) for i in range(count)]
        atomic_write_text(out / f"{split}.jsonl", "\n".join(lines) + "\n" if lines else "")
    atomic_write_json(out / MARKER, params)  # last: marks the corpus complete
    (out / PARTIAL).unlink(missing_ok=True)
    logger.info("wrote shapes corpus to %s (%d train, %d val clips)", out, num_train, num_val)
    return out


def demo_preprocess(**overrides: Any) -> PreprocessConfig:
    """Preprocessing suited to this corpus on a CPU: 8 frames spanning the 3.2 s clip at 64x64, 16 kHz.

    No horizontal flip (captions say left and right) and no colour jitter (they name colours); a mild
    crop so objects stay in view; room for the longer multi-object captions.
    """
    values: dict[str, Any] = {
        "num_frames": 8,
        "fps": 2.5,
        "image_size": 64,
        "resize_size": 72,
        "sample_rate": 16000,
        "max_text_len": 32,
        "min_scale": 0.5,
        "hflip": False,
        "color_jitter_prob": 0.0,
        "hue": 0.0,
        "audio_standardize": True,
    }
    values.update(overrides)
    return PreprocessConfig(**values)


def main(argv: list[str] | None = None) -> None:
    from data.cli import setup_logging

    parser = argparse.ArgumentParser(prog="python -m data.synth.shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        generate(args.out, args.num_train, args.num_val, args.seed, args.workers)
    except ValueError as exc:
        sys.exit(f"data.synth.shapes: {exc}")


if __name__ == "__main__":
    main()
