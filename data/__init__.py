"""Media decoding, manifests, tokenizers, transforms, run configs and synthetic corpora."""
