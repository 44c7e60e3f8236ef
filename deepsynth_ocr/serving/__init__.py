"""The OCR server: request checks (inputs), the batching queue, the models (engine), metrics, the app, vLLM's command."""
