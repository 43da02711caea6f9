"""The runtime: load Llama-family checkpoints (GGUF, safetensors), run them, generate text.

    >>> from ioaware.runtime import load_checkpoint, build_model, generate
    >>> ck = load_checkpoint()                      # the embedded SmolLM2-135M-Instruct GGUF
    >>> model = build_model(ck, "cpu")
    >>> ids = ck.tokenizer.encode(ck.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]))
    >>> print(generate(model, ck.tokenizer, ids, 32).text)
"""

from .llm.checkpoint import Checkpoint, build_model, choose_weights, default_model_path, load_checkpoint
from .llm.generate import GenerationResult, SamplingConfig, generate
from .llm.model import ModelArgs, Transformer
from .llm.tokenizer import Tokenizer

__all__ = ["Checkpoint", "GenerationResult", "ModelArgs", "SamplingConfig", "Tokenizer", "Transformer",
           "build_model", "choose_weights", "default_model_path", "generate", "load_checkpoint"]
