"""ReLU-fied models (`ioaware relufy`): SwiGLU's SiLU swapped for ReLU and quality recovered by distillation, so the
FFN's activations have exact zeros for "LLM in a flash" to skip. See adapter.py for the file the runtime loads."""
