"""Models: what differs per checkpoint family, the two loading backends (hf, unsloth), adapters, the tiny models."""
