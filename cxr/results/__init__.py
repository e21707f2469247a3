"""The results stage: medical metrics per backbone (evaluate) and the comparison across backbones (report)."""
