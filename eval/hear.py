"""HEAR's common API (Turian et al. 2022, hearbenchmark.com) for the audio tower of any VATT export.

``load_model(export_dir)`` returns a module with ``sample_rate``, ``scene_embedding_size`` and
``timestamp_embedding_size``; ``get_scene_embeddings(audio, model)`` and ``get_timestamp_embeddings(audio,
model)`` take mono audio (n_sounds, n_samples) in [-1, 1] at ``model.sample_rate``, of any length, so that
HEAR's evaluation kit (heareval) can run its tasks on our towers without our code knowing its tasks.

Everything goes through :class:`eval.downstream.towers.Tower`, as the downstream harness's audio features
do: the sound is cut into windows of the pretraining clip's length, each standardised as in training when
the export says so (the last zero-padded), and the tower's output before the FAC head is taken:

- scene: the AGG token of each window, averaged over the windows weighted by their real samples;
- timestamps: one embedding per ``hop_ms`` (50 ms by default, HEAR's suggested largest hop), the mean of the
  audio tokens whose centre falls in ``[k * hop, (k + 1) * hop)``; its timestamp is that interval's centre,
  ``(k + 0.5) * hop_ms``. ``T = ceil(duration / hop)``, so the last interval may be partial.
"""

from __future__ import annotations

import torch
from torch import nn

from eval.downstream.towers import Init, Tower, load_tower

DEFAULT_HOP_MS = 50.0


class HearModel(nn.Module):
    """An export's audio tower with the attributes HEAR reads; ``forward`` gives scene embeddings."""

    def __init__(self, tower: Tower, hop_ms: float = DEFAULT_HOP_MS, batch_size: int = 16) -> None:
        super().__init__()
        if tower.modality != "audio":
            raise ValueError(f"HEAR embeds audio; got the {tower.modality} tower")
        if hop_ms <= 0:
            raise ValueError(f"hop_ms must be positive, got {hop_ms}")
        self.tower = tower
        self.sample_rate: int = tower.preprocess.sample_rate
        self.scene_embedding_size: int = tower.dim
        self.timestamp_embedding_size: int = tower.dim
        self.hop_ms = float(hop_ms)
        self.batch_size = batch_size  # windows per pass through the tower

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return get_scene_embeddings(audio, self)


def load_model(
    model_file_path: str = "",
    *,
    hop_ms: float = DEFAULT_HOP_MS,
    init: Init = "pretrained",
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> HearModel:
    """The audio tower of the VATT export directory ``model_file_path`` (HEAR's ``load_model``).

    The keyword options extend HEAR's API (heareval passes them with ``--model-options``): the timestamp
    hop, the random-init twin of the architecture (``init="random"``, ``seed``), the device and the number
    of windows per pass.
    """
    if not model_file_path:
        raise ValueError("model_file_path must name a VATT export directory (there is no default model)")
    tower = load_tower(model_file_path, "audio", init=init, seed=seed, device=device)
    return HearModel(tower, hop_ms=hop_ms, batch_size=batch_size)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """One embedding per sound: (n_sounds, scene_embedding_size) float32, on ``audio``'s device."""
    _check(audio, model)
    emb = model.tower.wave_features(audio, "agg", batch_size=model.batch_size)  # (n, D)
    return emb.to(audio.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings every ``model.hop_ms`` (n_sounds, T, timestamp_embedding_size) and their timestamps
    (n_sounds, T) in milliseconds, each the centre of the interval its embedding covers."""
    _check(audio, model)
    rows = model.tower.wave_frame_features(audio, model.hop_ms / 1000.0, batch_size=model.batch_size)
    n = audio.shape[0]
    if rows:
        emb = torch.stack(rows)  # (n, T, D): every sound of a batch has the same length
    else:
        emb = torch.zeros(0, 0, model.timestamp_embedding_size)
    T = emb.shape[1]
    timestamps = ((torch.arange(T, dtype=torch.float64) + 0.5) * model.hop_ms).float().expand(n, T)
    return emb.to(audio.device), timestamps.contiguous().to(audio.device)


def _check(audio: torch.Tensor, model: nn.Module) -> None:
    if not isinstance(model, HearModel):
        raise TypeError(f"model must come from eval.hear.load_model, got {type(model).__name__}")
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
