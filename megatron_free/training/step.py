"""The training step in Megatron's contract: forward_step(data_iterator, model) returns
(output, loss_func); loss_func(output) returns (loss summed over tokens, num_tokens, report).

The KL term is not in loss_func: it is made on the stage that holds block L/2+1 and rides on an
activation into the backward (see model/latent.py). Its statistics reach the report through
``latent_report``, once per iteration.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state

from megatron_free.model.latent import LatentControl
from megatron_free.model.model import latent_modules


def batch_to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# The per-sequence report entry (importance-weighted validation): summed over tokens, never over samples.
SEQUENCE_NLL = "sequence nll"


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor, per_sequence: bool = False):
    """Cross-entropy summed over the unmasked tokens, their count, and the report entry (with
    ``per_sequence``, also each sequence's summed cross-entropy, [b])."""
    losses = output_tensor.float()
    loss_mask = loss_mask.float()
    loss = torch.sum(losses.view(-1) * loss_mask.view(-1))
    num_tokens = loss_mask.sum().to(torch.int)
    # The report is summed over microbatches and DP ranks by the caller: keep (sum, count).
    report = {"lm loss": torch.stack([loss.detach().clone(), num_tokens.float()])}
    if per_sequence:
        batch = loss_mask.shape[0]
        report[SEQUENCE_NLL] = (
            torch.stack(
                [
                    (losses.reshape(batch, -1) * loss_mask.reshape(batch, -1)).sum(-1),
                    loss_mask.reshape(batch, -1).sum(-1),
                ]
            )
            .detach()
            .double()
        )
    return loss, num_tokens, report


def make_forward_step(
    latent_mode: str = "posterior", kl_loss_scale: float = 1.0, latent_draw: int = 0, per_sequence: bool = False
):
    """forward_step for megatron's get_forward_backward_func.

    kl_loss_scale: the KL gradient's scale, matching how the schedule scales the cross-entropy
    (1 / num_microbatches, times the loss scale under fp16). latent_draw k > 0 draws another Z for
    every sample (its seed + k * 2^32). per_sequence: report each sequence's cross-entropy and keep
    each sample's log Q(Z|S) (importance-weighted validation).
    """

    def forward_step(data_iterator, model):
        batch = next(data_iterator) if data_iterator is not None else None
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        if batch is None:
            # Middle pipeline stages need no tokens, only the seeds for the latent.
            raise ValueError("every pipeline stage needs a batch (at least its latent_seeds)")
        batch = batch_to_device(batch, device)
        seeds = batch.get("latent_seeds")
        if seeds is not None and latent_draw:
            seeds = seeds + (latent_draw << 32)  # the seed's high 32 bits: a separate draw
        output = model(
            batch["tokens"] if parallel_state.is_pipeline_first_stage() else None,
            batch["position_ids"],
            None,  # causal masking inside attention: no explicit mask tensor
            labels=batch["labels"] if parallel_state.is_pipeline_last_stage() else None,
            loss_mask=batch["loss_mask"],
            latent_seeds=seeds,
            latent=LatentControl(
                mode=latent_mode, kl_loss_scale=kl_loss_scale, record_log_q=per_sequence and latent_mode == "posterior"
            ),
        )
        return output, partial(loss_func, batch["loss_mask"], per_sequence=per_sequence)

    return forward_step


def latent_report(model_chunks) -> dict:
    """KL statistics of the forward calls since the last report, averaged over microbatches and
    data-parallel ranks, available on every rank (the latent may live on a middle stage)."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for latent in latent_modules(model_chunks):
        totals += latent.kl_report.to(device)
        latent.reset_kl_report()
    if torch.distributed.is_initialized():
        # Only one TP group of one stage per DP replica recorded: sum over PP and DP, divide by
        # the number of recorded calls.
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        if tp_rank != 0:
            totals.zero_()
        torch.distributed.all_reduce(totals)
    calls = totals[3].item()
    if calls == 0:
        return {}
    kl_bits, hinged_bits, frac_above = (totals[:3] / calls).tolist()
    return {"kl": kl_bits, "kl loss": hinged_bits, "kl above kappa": frac_above}


def sequence_log_q(model_chunks, num_calls: int, batch_size: int) -> torch.Tensor:
    """Each sample's log Q(Z|S) of the recorded forward calls, [calls, b] float64, on every rank of a
    pipeline (the latent lives on one stage: the others add zeros); the records are cleared."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    values = torch.zeros(num_calls, batch_size, dtype=torch.float64, device=device)
    for latent in latent_modules(model_chunks):
        if latent.sequence_log_q:
            values += torch.stack(latent.sequence_log_q).to(device)
        latent.sequence_log_q.clear()
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(values, group=parallel_state.get_pipeline_model_parallel_group())
    return values
