"""Chat with a character: token counting, the model client and the offline local model."""
