"""The training stage: the five backbones, the seed's classifier on top, and resumable training."""
