"""Parameter, token and FLOP summary of VATT models: ``python -m vatt.summary [NAME ...] [-o key=value ...]``.

Models are built on the meta device, so even the largest costs no memory or compute; FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies, convolutions and attention; 2 FLOPs per
multiply-add; norms and activations are not counted) for one clip at the model's configured input size
(the paper's for the paper models), with all tokens (eval) and with DropToken (training).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vatt.config import VattConfig, apply_overrides, encoder_size
from vatt.model import VattModel
from vatt.registry import create_model, list_models
from vatt.towers import VideoTower

# VATT paper, Table 7: video backbone (voxel projection, positions, AGG token, transformer) per size
PAPER_BACKBONE_M = {"Small": 20.9, "Base": 87.9, "Medium": 155.0, "Large": 306.1}
# the paper's model totals (sums of Table 7 rows: video + audio + text sizes)
PAPER_TOTAL_M = {"vatt_bbs": 197.0, "vatt_mbs": 264.0, "vatt_lbs": 415.0, "vatt_ma_medium": 155.0}
PAPER_MODELS = ["vatt_bbs", "vatt_mbs", "vatt_lbs", "vatt_ma_medium"]


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_meta(name: str, **overrides) -> VattModel:
    """Build a registered model on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return create_model(name, **overrides)


def video_backbone_params(size: str) -> int:
    """Parameters of a modality-specific video tower of a Table 7 size at the paper's input size."""
    with torch.device("meta"):
        return count_params(VideoTower(VattConfig(video=encoder_size(size))))


@dataclass
class ModelSummary:
    name: str
    video: int  # video tower (for VATT-MA: its own tokenizer, positions, AGG, projections)
    audio: int
    text: int  # text tower without the word table
    word_table: int  # the vocabulary x word_dim table (a frozen word2vec in the paper)
    shared: int  # the shared transformer of VATT-MA, else 0
    head: int
    total: int
    tokens: dict[str, tuple[int, int]]  # modality -> (eval tokens, training tokens with DropToken)
    gflops_eval: dict[str, float]
    gflops_train: dict[str, float]


def _inputs(cfg: VattConfig, batch: int, device: str = "meta") -> tuple[torch.Tensor, ...]:
    video = torch.zeros(batch, cfg.num_frames, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    audio = torch.zeros(batch, cfg.audio_samples, device=device)
    ids = torch.ones(batch, cfg.max_text_len, dtype=torch.long, device=device)
    lengths = torch.full((batch,), cfg.max_text_len, dtype=torch.long, device=device)
    return video, audio, ids, lengths


def forward_gflops(model: VattModel, train: bool = False) -> dict[str, float]:
    """Forward GFLOPs per clip for each encode_* call (one caption for text), counted on meta tensors."""
    cfg = model.cfg
    batch = 2 if train else 1  # batch norm needs two rows in training
    video, audio, ids, lengths = _inputs(cfg, batch, device=str(next(model.parameters()).device))
    model.train(train)
    out = {}
    for key, fn, args in (
        ("video", model.encode_video, (video,)),
        ("audio", model.encode_audio, (audio,)),
        ("text", model.encode_text, (ids, lengths)),
    ):
        counter = FlopCounterMode(display=False)
        with counter:  # (no torch.no_grad: its views of parameters upset the module tracker)
            fn(*args)
        out[key] = counter.get_total_flops() / batch / 1e9
    model.eval()
    return out


def summarize(name: str, **overrides) -> ModelSummary:
    model = build_meta(name, **overrides)
    cfg = model.cfg
    word_table = model.text_tower.word_embed.embed.weight.numel()
    shared = count_params(model.encoder) if cfg.shared_encoder else 0
    t, h, w = cfg.video_grid
    nv, na = t * h * w, cfg.audio_tokens
    tokens = {
        "video": (nv, model.video_tower.drop_token.num_kept(nv) if cfg.drop_token < 1 else nv),
        "audio": (na, model.audio_tower.drop_token.num_kept(na) if cfg.drop_token < 1 else na),
        "text": (cfg.max_text_len, cfg.max_text_len),
    }
    return ModelSummary(
        name=name,
        video=count_params(model.video_tower),
        audio=count_params(model.audio_tower),
        text=count_params(model.text_tower) - word_table,
        word_table=word_table,
        shared=shared,
        head=count_params(model.head),
        total=count_params(model),
        tokens=tokens,
        gflops_eval=forward_gflops(model, train=False),
        gflops_train=forward_gflops(model, train=True),
    )


def _m(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def format_report(summaries: list[ModelSummary]) -> str:
    lines = ["Video backbone (voxel projection + positions + AGG + transformer) vs VATT Table 7:"]
    lines.append(f"  {'size':<8}{'ours':>10}{'paper':>10}{'diff':>9}")
    for size, paper in PAPER_BACKBONE_M.items():
        ours = video_backbone_params(size)
        lines.append(f"  {size:<8}{_m(ours):>10}{paper:>9.1f}M{100 * (ours / 1e6 / paper - 1):>+8.2f}%")
    lines.append("")
    head = (
        f"{'model':<16}{'video':>9}{'audio':>9}{'text':>9}{'words':>9}{'shared':>9}{'head':>8}"
        f"{'total':>9}{'w/o words':>11}{'paper':>8}"
    )
    lines += ["Parameters per tower (text excludes its word table, listed as 'words'):", head]
    for s in summaries:
        paper = PAPER_TOTAL_M.get(s.name)
        lines.append(
            f"{s.name:<16}{_m(s.video):>9}{_m(s.audio):>9}{_m(s.text):>9}{_m(s.word_table):>9}"
            f"{(_m(s.shared) if s.shared else '-'):>9}{_m(s.head):>8}{_m(s.total):>9}"
            f"{_m(s.total - s.word_table):>11}{(f'{paper:.0f}M' if paper else '-'):>8}"
        )
    ma = [s for s in summaries if s.shared]
    for s in ma:
        lines.append(
            f"  {s.name}: shared transformer {_m(s.shared)}; with the video tokenizer, positions, AGG and "
            f"projections {_m(s.shared + s.video)} (paper {PAPER_TOTAL_M.get(s.name, 0):.0f}M)"
        )
    lines += ["", "Tokens per clip (eval / training with DropToken) and forward GFLOPs per clip (eval / training):"]
    lines.append(f"{'model':<16}{'video':>12}{'audio':>12}{'text':>6}{'GF video':>18}{'GF audio':>18}{'GF text':>10}")
    for s in summaries:
        tv, ta, tt = s.tokens["video"], s.tokens["audio"], s.tokens["text"]
        gv = f"{s.gflops_eval['video']:.1f}/{s.gflops_train['video']:.1f}"
        ga = f"{s.gflops_eval['audio']:.1f}/{s.gflops_train['audio']:.1f}"
        lines.append(
            f"{s.name:<16}{f'{tv[0]}/{tv[1]}':>12}{f'{ta[0]}/{ta[1]}':>12}{tt[0]:>6}{gv:>18}{ga:>18}"
            f"{s.gflops_eval['text']:>10.2f}"
        )
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"override {text!r} is not key=value")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vatt.summary", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"registered models (default: {' '.join(PAPER_MODELS)})")
    ap.add_argument("-o", "--override", action="append", default=[], type=_parse_override, help="config key=value")
    args = ap.parse_args(argv)
    names = args.names or PAPER_MODELS
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(list_models())}")
    overrides = dict(args.override)
    try:
        apply_overrides(VattConfig(), overrides)
    except (KeyError, ValueError) as e:
        ap.error(str(e).strip("\"'"))
    print(format_report([summarize(n, **overrides) for n in names]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
