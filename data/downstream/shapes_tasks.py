"""Downstream tasks built from a held-out shapes corpus (:mod:`data.synth.shapes`).

The corpus is generated on first use under ``ROOT/shapes-<train>-<val>-<test>-s<seed>`` with a seed
the demo never pretrains on (pretraining uses the generator's default, 0), so every clip is unseen.
One corpus serves all splits: its own "train" split is the task's train split, and its "val" split
is divided into val and test, stratified so both get the same mix of objects.

Tasks (class names are the values of the manifest labels, e.g. ``colour:yellow`` -> ``yellow``):

- ``shapes/video/{shape,colour,motion}``: single-object clips (``count:1``, so the label is
  unambiguous), read by the video tower; ``shapes/video/count``: every clip, 1 to 3 objects;
- ``shapes/audio/{shape,colour,motion}``: the same clips through the audio tower, where the object's
  shape sets the timbre, its colour the pitch and its motion the pitch contour;
- ``shapes/text/{shape,colour}``: each caption of a single-object clip, so the text tower is measured.

Shape, colour and motion tasks carry zero-shot prompts in the captions' own words ("a red disc",
"a plus sign moving up"); the captions never state a count, so the count task has none.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from data.downstream.task import Example, Modality, Task, TaskError, class_index
from data.manifest import ManifestEntry, ManifestError, read_manifest
from data.synth import shapes

DEFAULT_SEED = 1000  # the demo pretrains on the generator's default seed, 0

# factor -> (manifest label key, classes in the generator's order)
FACTORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "shape": ("shape", tuple(shapes.SHAPES)),
    "colour": ("colour", tuple(shapes.COLOURS)),
    "motion": ("motion", tuple(shapes.DIRECTIONS)),
    "count": ("count", tuple(str(n) for n in range(1, len(shapes.COUNT_WEIGHTS) + 1))),
}
VIDEO_FACTORS = ("shape", "colour", "motion", "count")
AUDIO_FACTORS = ("shape", "colour", "motion")
TEXT_FACTORS = ("shape", "colour")


def _article(text: str) -> str:
    return re.sub(r"\ba (?=[aeio])", "an ", text)  # "an orange disc", as the captions write it


def prompts(factor: str) -> dict[str, list[str]]:
    """Zero-shot prompts per class of ``factor`` in the corpus's caption words, over every synonym
    of the shape and every value of the other factor; empty for ``count``, which captions never say."""
    words = shapes.SHAPE_WORDS
    if factor == "shape":
        return {s: [_article(f"a {c} {w}") for c in shapes.COLOURS for w in words[s]] for s in shapes.SHAPES}
    if factor == "colour":
        return {c: [_article(f"a {c} {w}") for s in shapes.SHAPES for w in words[s]] for c in shapes.COLOURS}
    if factor == "motion":
        return {
            d: [f"a {w} {m}" for s in shapes.SHAPES for w in words[s] for m in shapes.MOTION_WORDS[d]]
            for d in shapes.DIRECTIONS
        }
    return {}


def _factors(entry: ManifestEntry, where: str) -> dict[str, str]:
    """The clip's count, and for a single-object clip its shape, colour and motion, from its labels."""
    values: dict[str, list[str]] = {}
    for label in entry.labels:
        key, _, value = label.partition(":")
        values.setdefault(key, []).append(value)
    count = values.get("count", [])
    if len(count) != 1:
        raise TaskError(f"{where}: expected one 'count:N' label, got {entry.labels}")
    out = {"count": count[0]}
    if count[0] == "1":
        for factor in ("shape", "colour", "motion"):
            key = FACTORS[factor][0]
            if len(values.get(key, [])) != 1:
                raise TaskError(f"{where}: a single-object clip needs one '{key}:' label, got {entry.labels}")
            out[factor] = values[key][0]
    return out


def _stratum(f: dict[str, str]) -> tuple[str, ...]:
    return (f["count"], f.get("colour", ""), f.get("shape", ""), f.get("motion", ""))


def split_val_test(factors: list[dict[str, str]], num_val: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the held-out clips (their :func:`_factors`) for val (``num_val`` of them) and test.

    The clips are sorted by (count, colour, shape, motion) with seeded ties and dealt out evenly, so
    every count and colour is divided between val and test in proportion (within one clip).
    """
    n = len(factors)
    ties = np.random.default_rng([seed, 7]).permutation(n)
    order = sorted(range(n), key=lambda i: (_stratum(factors[i]), ties[i]))
    # Position k goes to val when the running share num_val * k / n passes a whole number.
    val = {i for k, i in enumerate(order) if (k + 1) * num_val // n > k * num_val // n}
    return sorted(val), sorted(set(range(n)) - val)


def shapes_tasks(
    root: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    num_train: int = 500,
    num_val: int = 250,
    num_test: int = 250,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Task]:
    """The shapes tasks by name, generating the corpus under ``root`` on first use (reused after).

    ``num_train``, ``num_val`` and ``num_test`` count clips of all kinds; about half hold one object.
    The defaults give the smallest single-object class (one of the eight colours) at least 20 training
    clips and about 10 in val and in test.
    """
    if min(num_train, num_val, num_test) < 1:
        raise ValueError(f"every split needs a clip, got {num_train}, {num_val}, {num_test}")
    out = Path(root) / f"shapes-{num_train}-{num_val}-{num_test}-s{seed}"
    corpus = shapes.generate(out, num_train, num_val + num_test, seed=seed, workers=workers, progress=progress)

    clips: dict[str, list[tuple[ManifestEntry, dict[str, str]]]] = {}
    by_file: dict[str, list[tuple[ManifestEntry, dict[str, str]]]] = {}
    for name in ("train", "val"):
        manifest = corpus / f"{name}.jsonl"
        try:
            entries = read_manifest(manifest)
        except (ManifestError, OSError) as exc:
            raise TaskError(f"{manifest}: {exc}") from None
        by_file[name] = [(e, _factors(e, f"{manifest}:{e.line}")) for e in entries]
    clips["train"] = by_file["train"]
    held = by_file["val"]
    val, test = split_val_test([f for _, f in held], num_val, seed)
    clips["val"] = [held[i] for i in val]
    clips["test"] = [held[i] for i in test]

    def task(name: str, factor: str, modalities: tuple[Modality, ...], text: bool = False) -> Task:
        key, classes = FACTORS[factor]
        splits: dict[str, list[Example]] = {}
        for split, rows in clips.items():
            examples = []
            for entry, f in rows:
                if factor not in f:  # a clip of several objects has no single shape, colour or motion
                    continue
                label = class_index(classes, f[factor], f"{entry.media} ({key}:{f[factor]})")
                if text:
                    examples += [Example(label, text=c.text, group=entry.id) for c in entry.captions]
                else:
                    examples.append(Example(label, path=entry.media, group=entry.id))
            splits[split] = examples
        return Task(name, list(classes), splits, modalities, prompts=prompts(factor), source=str(corpus))

    tasks = [task(f"shapes/video/{f}", f, ("video", "audio")) for f in VIDEO_FACTORS]
    tasks += [task(f"shapes/audio/{f}", f, ("audio", "video")) for f in AUDIO_FACTORS]
    tasks += [task(f"shapes/text/{f}", f, ("text",), text=True) for f in TEXT_FACTORS]
    return {t.name: t for t in tasks}
