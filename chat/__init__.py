"""A conversation with a character: the chat turn (typed, by voice, OpenAI-compatible), its
prompt, and memory formation."""
