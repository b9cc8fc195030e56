"""Self-supervised objectives for the AVSR front-ends (wav2vec 2.0 for audio, MoCo)."""
