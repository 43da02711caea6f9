"""Running a Llama-family model: checkpoints (GGUF, safetensors), tokenizer, weight formats, the model, generation."""
