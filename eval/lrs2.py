"""LRS2 evaluation of an AVSR export: WER and CER over a whole split, the real-time factor of decoding,
and a JSONL of reference and hypothesis per utterance.

    python -m eval.lrs2 --root DIR --split test --modality {a,v,av} --export RUN/export \\
        [--snr DB [--noise white|babble --babble-dir D]] [--beam 10 --ctc-weight 0.1 | --greedy] \\
        [--json F] [--hyps F.jsonl]

The root is an LRS2 directory as distributed (or a synthetic corpus of :mod:`data.synth.speech`, which
has the same layout); the mouth crops, sample rate and normalisation come from the export, so a model
is evaluated on exactly the preprocessing it was trained on. Rates are corpus-level and in percent,
through :func:`eval.wer.error_rates` (upper case, apostrophes kept). An utterance whose media cannot be
decoded still counts, with an empty hypothesis (all its words deleted), and is reported.

The real-time factor is model time (encoder + search, not media decoding) over the duration of the
audio. On a CPU, decoding runs with ``--threads`` torch threads (default 1: on a small or shared CPU
two threads contending for two cores are several times slower than one, and the search is many small
tensor operations). Training calls :func:`transcribe` for its periodic validation WER.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import avsr
from avsr.decoding import beam_search, greedy_ctc
from data.batching import FrameBudgetBatchSampler
from data.cli import setup_logging
from data.files import OutputPathError, atomic_path, atomic_write_json, check_output_path
from data.lrs2 import LRS2Config, LRS2Dataset, LRS2FormatError, collate_lrs2, read_split
from data.noise import AddNoise, BabbleNoise
from eval.wer import error_rates, utterance_errors
from train.export import Export, ExportError, read_export

__all__ = ["DecodeConfig", "evaluate", "load_avsr_export", "lrs2_config", "main", "make_loader", "transcribe"]

logger = logging.getLogger(__name__)


@dataclass
class DecodeConfig:
    """How hypotheses are produced: greedy CTC, or the joint CTC/attention beam search."""

    method: Literal["greedy", "beam"] = "beam"
    beam_size: int = 10
    ctc_weight: float = 0.1
    length_bonus: float = 0.0
    threads: int = 1  # torch threads while decoding on a CPU; 0 leaves torch's setting alone


def load_avsr_export(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[avsr.AvsrModel, avsr.TokenSet, Export]:
    """The model (eval mode, on ``device``), its output units and the export record."""
    export = read_export(path, kind="avsr")
    if "tokens" not in export.extra:
        raise ExportError(f"export {str(path)!r} has no output units (extra.tokens); was it written by train_avsr.py?")
    tokens = avsr.TokenSet.from_dict(export.extra["tokens"])
    model = avsr.create_model(export.model_name, **export.overrides)
    model.load_state_dict(export.state_dict)
    return model.to(device).eval(), tokens, export


def lrs2_config(root: str | Path, preprocess: dict[str, Any], **fields: Any) -> LRS2Config:
    """An :class:`LRS2Config` for ``root`` with the preprocessing an export carries (unknown keys ignored)."""
    known = set(LRS2Config.__dataclass_fields__)
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in preprocess.items() if k in known}
    return LRS2Config(root=str(root), **{**values, **fields})


def make_loader(dataset: LRS2Dataset, max_frames: int, num_workers: int = 0, limit: int = 0) -> DataLoader:
    """One pass over the dataset (or its first ``limit`` utterances) in batches of similar length whose
    padded size stays within ``max_frames`` video frames."""
    lengths = dataset.lengths()
    if limit > 0:
        lengths = lengths[:limit]
    sampler = FrameBudgetBatchSampler(lengths, max_frames, shuffle=False, epochs=1)
    # A generator of its own, so iterating leaves the global RNG (which training uses) untouched.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_lrs2,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


@contextlib.contextmanager
def _threads(n: int, device: torch.device) -> Iterator[None]:
    if n <= 0 or device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def transcribe(
    model: avsr.AvsrModel,
    tokens: avsr.TokenSet,
    loader: DataLoader,
    modality: str,
    decode: DecodeConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Hypotheses for every utterance the loader yields.

    Returns per-utterance records ``{"id", "ref", "hyp"}`` (``"failed": reason`` for media that could not
    be decoded, whose hypothesis is empty) in the order of the loader's dataset, and timing totals
    ``{"decode_seconds", "audio_seconds"}``. The model is left in eval mode.
    """
    device = torch.device(device)
    model.eval()
    dataset: LRS2Dataset = loader.dataset  # type: ignore[assignment]
    order = {clip_id: i for i, clip_id in enumerate(dataset.ids)}
    sample_rate = dataset.cfg.sample_rate
    records: list[dict[str, Any]] = []
    decode_seconds = audio_seconds = 0.0
    total = sum(len(b) for b in loader.batch_sampler)  # type: ignore[union-attr]
    bar = tqdm(total=total, desc=f"decoding ({modality})", unit="utt", disable=not progress, leave=False)
    for batch in loader:
        for path, reason in batch["failures"]:
            clip_id = _clip_id_of(path)
            logger.warning("%s: counted with an empty hypothesis (%s)", clip_id, reason)
            records.append({"id": clip_id, "ref": dataset.text(order[clip_id]), "hyp": "", "failed": reason})
        bar.update(len(batch["failures"]))
        if not batch["ids"]:
            continue
        inputs = {  # only the streams of this modality ("video..." for "v", "audio..." for "a")
            k: batch[k].to(device)
            for k in ("video", "video_lengths", "audio", "audio_lengths")
            if k in batch and (k[0] in modality)
        }
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with _threads(decode.threads, device):
            enc = model.encode(**inputs, modality=modality)
            if decode.method == "greedy":
                ids = greedy_ctc(enc["ctc_log_probs"], enc["enc_lengths"], eos=model.eos)
            else:
                nbest = beam_search(
                    model,
                    enc,
                    beam_size=decode.beam_size,
                    ctc_weight=decode.ctc_weight,
                    length_bonus=decode.length_bonus,
                )
                ids = [hyps[0].tokens if hyps else [] for hyps in nbest]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        decode_seconds += time.perf_counter() - start
        audio_seconds += float(batch["audio_lengths"].sum()) / sample_rate
        for clip_id, ref, hyp in zip(batch["ids"], batch["text"], ids):
            records.append({"id": clip_id, "ref": ref, "hyp": tokens.decode(hyp)})
        bar.update(len(batch["ids"]))
    bar.close()
    records.sort(key=lambda r: order[r["id"]])
    return records, {"decode_seconds": decode_seconds, "audio_seconds": audio_seconds}


def _clip_id_of(path: str) -> str:
    """``<programme>/<clip>`` of a clip's media path."""
    p = Path(path)
    return f"{p.parent.name}/{p.stem}"


def summarize(records: Sequence[dict[str, Any]], timing: dict[str, float]) -> dict[str, Any]:
    """``{"wer", "cer", "rtf", "utterances", ...}`` (rates in percent) from :func:`transcribe`'s output."""
    rates = error_rates([r["ref"] for r in records], [r["hyp"] for r in records])
    audio = timing["audio_seconds"]
    return {
        "wer": rates["wer"],
        "cer": rates["cer"],
        "rtf": timing["decode_seconds"] / audio if audio > 0 else None,  # None: nothing was decoded
        "utterances": len(records),
        "failed": sum(1 for r in records if "failed" in r),
        "word_errors": rates["word_errors"],
        "ref_words": rates["ref_words"],
        "char_errors": rates["char_errors"],
        "ref_chars": rates["ref_chars"],
        "decode_seconds": timing["decode_seconds"],
        "audio_seconds": audio,
    }


def validate(
    model: avsr.AvsrModel,
    tokens: avsr.TokenSet,
    loader: DataLoader,
    modalities: Sequence[str],
    decode: DecodeConfig,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """WER and CER (%) of every modality (``val_wer_<m>``; ``val_wer`` is the first one's) and the count."""
    result: dict[str, Any] = {}
    for i, m in enumerate(modalities):
        summary = summarize(*transcribe(model, tokens, loader, m, decode, device))
        if i == 0:
            result.update(val_wer=summary["wer"], val_cer=summary["cer"])
        result.update({f"val_wer_{m}": summary["wer"], f"val_cer_{m}": summary["cer"]})
    result["val_utterances"] = summary["utterances"]
    return result


def write_hyps(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """One JSON object per utterance: id, reference, hypothesis and its edit counts."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps({**r, **utterance_errors(r["ref"], r["hyp"])}) + "\n")


def evaluate(
    model: avsr.AvsrModel,
    tokens: avsr.TokenSet,
    preprocess: dict[str, Any],
    root: str | Path,
    split: str = "test",
    modality: str | None = None,
    decode: DecodeConfig | None = None,
    noise: AddNoise | None = None,
    max_frames: int = 2000,
    num_workers: int = 0,
    limit: int = 0,
    landmarks_dir: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate a model on a split with the export's ``preprocess``; returns the summary and the
    per-utterance records."""
    decode = decode or DecodeConfig()
    modality = modality or model.cfg.modalities
    if not set(modality) <= set(model.cfg.modalities):
        raise ValueError(f"modality {modality!r} is not available: the model has {model.cfg.modalities!r}")
    if noise is not None and "a" not in modality:
        logger.warning("noise only affects audio; modality %r ignores it", modality)
    cfg = lrs2_config(root, preprocess, landmarks_dir=landmarks_dir)
    dataset = LRS2Dataset(
        cfg,
        split,
        train=False,
        audio_transform=noise if "a" in modality else None,
        load_video="v" in modality,
        load_audio="a" in modality,
    )
    if len(dataset) == 0:
        raise ValueError(f"the {split} split of {root} lists no utterances; nothing to evaluate")
    loader = make_loader(dataset, max_frames, num_workers, limit)
    records, timing = transcribe(model, tokens, loader, modality, decode, device, progress)
    summary = summarize(records, timing)
    summary.update({"split": split, "modality": modality, "method": decode.method})
    if decode.method == "beam":
        summary.update({"beam": decode.beam_size, "ctc_weight": decode.ctc_weight, "length_bonus": decode.length_bonus})
    return summary, records


def make_noise(
    kind: str | None,
    snr: float | None,
    babble_dir: str | None,
    exclude: Sequence[str],
    sample_rate: int,
    seed: int,
) -> AddNoise | None:
    """Evaluation noise at a fixed SNR (white unless ``kind`` says babble); the same for every run."""
    if snr is None:
        if kind is not None or babble_dir:
            raise ValueError("--noise and --babble-dir need --snr DB")
        return None
    kind = kind or "white"
    babble = None
    if kind == "babble":
        if not babble_dir:
            raise ValueError("--noise babble needs --babble-dir (a folder of speech that is not the test set)")
        babble = BabbleNoise.from_folder(babble_dir, sample_rate=sample_rate, exclude=exclude, seed=seed)
    return AddNoise(kind, snr, babble=babble, seed=seed, deterministic=True)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.lrs2", description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="LRS2 directory (holding mvlrs_v1/ and the split lists)")
    p.add_argument("--split", default="test", choices=["pretrain", "train", "val", "test"])
    p.add_argument("--export", required=True, help="AVSR export directory written by train_avsr.py")
    p.add_argument("--modality", choices=["a", "v", "av"], default=None, help="default: every stream of the model")
    p.add_argument("--snr", type=float, default=None, help="add noise at this SNR in dB (audio)")
    p.add_argument("--noise", choices=["white", "babble"], default=None, help="noise kind with --snr (white)")
    p.add_argument("--babble-dir", default=None, help="folder of speech for babble (the split's clips excluded)")
    p.add_argument("--greedy", action="store_true", help="greedy CTC instead of the joint beam search")
    p.add_argument("--beam", type=int, default=10, help="beam size (>= 1)")
    p.add_argument("--ctc-weight", type=float, default=0.1, help="CTC weight in the joint score, in [0, 1]")
    p.add_argument("--length-bonus", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (0: torch's default)")
    p.add_argument("--max-frames", type=int, default=2000, help="video frames per batch (padded, >= 1)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (>= 0)")
    p.add_argument("--limit", type=int, default=0, help="only the first N utterances of the split (0: all)")
    p.add_argument("--landmarks-dir", default=None, help="per-clip landmark files (else the export's fixed box)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help='write {"wer", "cer", "rtf", "utterances", ...} here')
    p.add_argument("--hyps", default=None, help="write reference/hypothesis per utterance here (JSONL)")
    args = p.parse_args(argv)
    setup_logging()
    decode = DecodeConfig(
        method="greedy" if args.greedy else "beam",
        beam_size=args.beam,
        ctc_weight=args.ctc_weight,
        length_bonus=args.length_bonus,
        threads=args.threads,
    )
    try:
        _check_args(args)
        model, tokens, export = load_avsr_export(args.export, args.device)
        sample_rate = int(export.preprocess.get("sample_rate", 16000))
        split_ids = [e.id for e in read_split(args.root, args.split)]
        noise = make_noise(args.noise, args.snr, args.babble_dir, split_ids, sample_rate, args.seed)
        summary, records = evaluate(
            model,
            tokens,
            export.preprocess,
            args.root,
            args.split,
            args.modality,
            decode,
            noise,
            max_frames=args.max_frames,
            num_workers=args.workers,
            limit=args.limit,
            landmarks_dir=args.landmarks_dir,
            device=args.device,
        )
        summary.update(
            {
                "snr": args.snr,
                "noise": (args.noise or "white") if args.snr is not None else None,
                "export": args.export,
                "fingerprint": export.fingerprint,
            }
        )
        if args.json:
            atomic_write_json(args.json, summary)
        if args.hyps:
            write_hyps(args.hyps, records)
    except (ExportError, LRS2FormatError, ValueError, OSError) as exc:  # OutputPathError is a ValueError
        sys.exit(f"eval.lrs2: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    noise_note = f", {summary['noise']} noise at {args.snr:g} dB" if args.snr is not None else ""
    print(
        f"LRS2 {args.split} ({summary['modality']}, {decode.method}{noise_note}): "
        f"WER {summary['wer']:.2f}%  CER {summary['cer']:.2f}%  RTF {summary['rtf'] or float('nan'):.3f}  "
        f"utterances {summary['utterances']}" + (f" ({summary['failed']} failed)" if summary["failed"] else "")
    )


def _check_args(args: argparse.Namespace) -> None:
    """Every argument before any work, each failure naming its flag (ValueError, one line)."""
    for flag, value, low in (
        ("--beam", args.beam, 1),
        ("--threads", args.threads, 0),
        ("--max-frames", args.max_frames, 1),
        ("--workers", args.workers, 0),
        ("--limit", args.limit, 0),
    ):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if not 0.0 <= args.ctc_weight <= 1.0:  # also refuses nan
        raise ValueError(f"--ctc-weight must be in [0, 1], got {args.ctc_weight}")
    for flag, value in (("--length-bonus", args.length_bonus), ("--snr", args.snr)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value}")
    if not Path(args.export).is_dir():
        raise ExportError(f"--export: export directory {args.export!r} not found")
    for flag, folder in (
        ("--root", args.root),
        ("--babble-dir", args.babble_dir),
        ("--landmarks-dir", args.landmarks_dir),
    ):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag}: directory {folder!r} not found")
    for flag, out in (("--json", args.json), ("--hyps", args.hyps)):
        if out is not None:
            try:
                check_output_path(out)
            except OutputPathError as exc:
                raise OutputPathError(f"{flag}: {exc}") from None
    if args.json is not None and args.hyps is not None and Path(args.json).resolve() == Path(args.hyps).resolve():
        raise ValueError(f"--json and --hyps name the same file {args.json!r}")


if __name__ == "__main__":
    main()
