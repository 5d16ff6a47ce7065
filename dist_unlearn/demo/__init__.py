"""The `make demo` job: fictitious people, a fine-tuned small GPT-2, and `dist-unlearn unlearn` on it."""
