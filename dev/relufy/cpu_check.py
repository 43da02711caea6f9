"""CPU check that distillation moves the real model (no GPU here): SmolLM2, abrupt ReLU swap (--blend 0), rank 8,
lr 1e-3, 12 steps of 4 rows x 48 tokens of the calibration text; KL(teacher || student) on those rows before and
after. Output: dev/relufy/cpu-check-2026-12-03.txt (7 minutes on the shared 2-core machine). Cited by README.md."""

import time

import torch

from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.offload.text import load_text
from ioaware.runtime.relufy.student import make_student
from ioaware.runtime.relufy.text import chunks
from ioaware.runtime.relufy.train import TrainConfig, mean_kl, train

torch.set_num_threads(2)
ck = load_checkpoint()
teacher = build_model(ck, "cpu", torch.float32, weights="dense")
student = make_student(build_model(ck, "cpu", torch.float32, weights="dense"), "relu", 0.0, 8, 0)
rows = chunks(ck.tokenizer.encode(load_text("calibration")), 48)[:4]
t = time.time()
print("kl before", mean_kl(teacher, student, rows, 4), flush=True)
rep = train(teacher, student, rows, TrainConfig(steps=12, batch=4, lr=1e-3, blend=0.0, seed=0))
print("kl after", mean_kl(teacher, student, rows, 4), "s", time.time() - t, flush=True)
print([round(x, 3) for x in rep["kl_curve"]])
