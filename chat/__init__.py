"""A conversation with a character: the chat turn, its prompt, and memory formation."""
