"""The model client: OpenAI's SDK (any compatible server), the offline local model, token counts."""
