"""Input covariances of every linear layer, measured by running the dense model on the shipped calibration text.

Four inputs per block feed the seven projections: the attention norm's output (q, k, v), the attention output
(o), the FFN norm's output (gate, up) and silu(gate) * up (down). For each, C = sum over tokens of x x^T, summed in
float64 (SVD-LLM's whitening needs X^T X, uncentred). The text is the model's own generations shipped in
`ioaware/runtime/offload/data/calibration.txt`; held-out perplexity is measured on `heldout.txt` (other prompts).
"""

from __future__ import annotations

import torch

from ..llm.model import Transformer
from ..offload.activations import progress_bar, run_tokens, sdpa_attention

SITES = ("attn_in", "o_in", "ffn_in", "down_in")  # the module each is read at: wqkv, wo, w13, w2


@torch.inference_mode()
def input_covariances(model: Transformer, batches: list[torch.Tensor], progress: bool = False
                      ) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Per layer {site: C (n, n) float64} over all tokens of `batches` ((1, T) long tensors), and the token count."""
    covs: list[dict[str, torch.Tensor]] = [{} for _ in model.layers]

    def hook(i: int, site: str):
        def fn(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            # one chunk's product in fp32 (relative error ~1e-7, far below the whitening's ridge of 1e-4), the
            # running sum over chunks in fp64
            c = (x.T @ x).double()
            covs[i][site] = covs[i][site] + c if site in covs[i] else c

        return fn

    handles = []
    for i, layer in enumerate(model.layers):
        for site, mod in zip(SITES, (layer.attention.wqkv, layer.attention.wo, layer.feed_forward.w13,
                                     layer.feed_forward.w2)):
            handles.append(mod.register_forward_pre_hook(hook(i, site)))
    prog, task = progress_bar("calibrating (input covariances)", len(batches), progress)
    n = 0
    try:
        with prog, sdpa_attention(model):
            for b in batches:
                run_tokens(model, b)
                n += b.numel()
                prog.update(task, advance=1, info=f"{n} tokens")
    finally:
        for h in handles:
            h.remove()
    return covs, n

